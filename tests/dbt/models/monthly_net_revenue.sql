{{ config(materialized='table') }}
select date_trunc('month', o_orderdate)::date as month,
       sum(net_revenue) as net_revenue,
       count(*) as orders
  from {{ source('tpch', 'order_revenue') }}
 group by 1
