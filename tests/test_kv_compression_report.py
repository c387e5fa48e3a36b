"""experiments/kv_compression's report: a hyper-scaling view without rows (samples or lengths set to ()) has
neither a table nor a plot panel, as on the retrieval task, whose two-token answers leave nothing to vote or cap."""

import pytest
from PIL import Image

from experiments import kv_compression

BUDGET_ROWS = [dict(method="dense", budget=None, accuracy=1.0, kv_held=40.0, kv_read_per_step=None),
               dict(method="h2o", budget=8, accuracy=0.25, kv_held=8.0, kv_read_per_step=None),
               dict(method="h2o", budget=16, accuracy=0.5, kv_held=16.0, kv_read_per_step=None),
               dict(method="quest", budget=8, accuracy=0.75, kv_held=40.0, kv_read_per_step=7.5)]
VOTE_ROWS = [dict(method="dense", samples=n, accuracy=0.5, kv_per_problem=40.0 * n) for n in (1, 2)]
LENGTH_ROWS = [dict(method="dense", completion_len=n, accuracy=0.5, kv_held=30.0 + n) for n in (4, 8)]


@pytest.mark.parametrize("vote_rows,length_rows,panels", [
    (VOTE_ROWS, LENGTH_ROWS, 4), ([], LENGTH_ROWS, 3), (VOTE_ROWS, [], 3), ([], [], 2)])
def test_views_without_rows_are_left_out(tmp_path, vote_rows, length_rows, panels):
  tables = kv_compression.markdown_tables(BUDGET_ROWS, vote_rows, length_rows)
  assert ("samples (majority vote)" in tables) == bool(vote_rows)
  assert ("completion cap" in tables) == bool(length_rows)
  assert "| h2o | 16 | 0.500 | 16.0 | — |" in tables and "| quest | 8 | 0.750 | 40.0 | 7.5 |" in tables
  kv_compression.plot(BUDGET_ROWS, vote_rows, length_rows, str(tmp_path / "plot.png"))
  width, _ = Image.open(tmp_path / "plot.png").size
  assert width == panels * 5 * 120  # 5 inches a panel at 120 dpi
