{{ config(materialized='incremental', unique_key='month') }}
-- An incremental model: a plain run adds only the latest months, so after a
-- backfill it keeps the history it had unless rebuilt (--full-refresh).
select date_trunc('month', o_orderdate)::date as month,
       sum(net_revenue) as net_revenue
  from {{ source('tpch', 'order_revenue') }}
{% if is_incremental() %}
 where o_orderdate >= (select max(month) from {{ this }})
{% endif %}
 group by 1
