"""Training-free KV-cache compression baselines in the decoder's cache interface, for comparison with DMS.

Each settings object is a hashable `cache_factory` for `jaxpost.generate.generate`:
`SinkWindow(budget=, sinks=)` (StreamingLLM), `H2O(budget=, recent=)`, `TOVA(budget=)` evict down to `budget` KV
tokens per (sequence, layer, KV head) and report live KV bytes; `Quest(budget=, page_size=)` keeps every token and
reads about `budget` of them per decode step, reporting KV tokens read.
"""

from jaxpost.models.baseline_caches.eviction import EvictionKVCache, EvictionLayer, EvictionPolicy, StepView
from jaxpost.models.baseline_caches.h2o import H2O
from jaxpost.models.baseline_caches.quest import Quest, QuestKVCache, QuestLayer, select_pages
from jaxpost.models.baseline_caches.sink_window import SinkWindow
from jaxpost.models.baseline_caches.tova import TOVA

__all__ = ["EvictionKVCache", "EvictionLayer", "EvictionPolicy", "H2O", "Quest", "QuestKVCache", "QuestLayer",
           "SinkWindow", "StepView", "TOVA", "select_pages"]
