"""The study index: patients, studies, series and instances materialized in ClickHouse."""
