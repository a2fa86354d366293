{{ config(materialized='incremental', incremental_strategy='microbatch',
          event_time='year', batch_size='year', begin='1992-01-01',
          unique_key='year') }}
-- A microbatch model: a plain run rebuilds only the latest year, so after a
-- backfill it keeps the history it had unless rebuilt for the backfilled
-- period (--event-time-start/--event-time-end) or whole (--full-refresh).
select date_trunc('year', o_orderdate)::date as year,
       sum(net_revenue) as net_revenue
  from {{ source('tpch', 'order_revenue') }}
 group by 1
