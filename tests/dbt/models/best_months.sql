{{ config(materialized='view') }}
select month, net_revenue
  from {{ ref('monthly_net_revenue') }}
 order by net_revenue desc
 limit 12
