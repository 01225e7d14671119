"""One schema for the results table: the analysis' writer and the reports' reader take every
column list from ibtools.schema, and a unit conversion moves each quantity with its interval."""

from __future__ import annotations

import math

import pandas as pd

import ibtools.results as results
import ibtools.reports.table as table
from ibtools import schema


def test_writer_and_reader_use_the_same_lists():
    assert results.COLUMNS is schema.COLUMNS and results.KEY is schema.KEY
    assert results.FLAG_COLUMN == schema.FLAG_COLUMN == "flag_text"
    for name in ("REQUIRED_COLUMNS", "OPTIONAL_COLUMNS", "INFORMATION_COLUMNS",
                 "NUMERIC_COLUMNS", "UNITS"):
        assert getattr(table, name) is getattr(schema, name)
    # every column of the table is either required or optional for the reports
    assert set(schema.COLUMNS) <= set(schema.REQUIRED_COLUMNS) | set(schema.OPTIONAL_COLUMNS)


def test_every_interval_column_is_paired_with_its_quantity():
    ci_columns = [c for c in schema.COLUMNS if c.startswith("ci_")]
    paired = [c for pair in schema.INTERVALS.values() for c in pair]
    assert sorted(ci_columns) == sorted(paired)
    assert schema.interval_of("i_prev_t") == ("ci_low_prev_t", "ci_high_prev_t")
    assert schema.interval_of("ib_value") == ("ci_low", "ci_high")
    assert set(schema.INFORMATION_COLUMNS) == set(schema.INTERVALS) | set(paired)


def test_bits_convert_each_quantity_with_its_interval():
    row = {c: 0 for c in schema.REQUIRED_COLUMNS}
    row.update(checkpoint="a.pt", model="mlp", norm="layer", layer="h1", estimator="ksg",
               params="{}", unit="nats", lam=0.0)
    for q, (low, high) in schema.INTERVALS.items():
        row.update({q: 1.0, low: 0.5, high: 2.0})
    bits = table.prepare_table(pd.DataFrame([row]), units="bits").iloc[0]
    assert bits["unit"] == "bits"
    for q, (low, high) in schema.INTERVALS.items():
        assert math.isclose(bits[q], 1 / math.log(2))
        assert math.isclose(bits[low], 0.5 / math.log(2)), low
        assert math.isclose(bits[high], 2.0 / math.log(2)), high
