"""BEIR's ``ignore_identical_ids`` (on by default in its ``EvaluateRetrieval.evaluate``): a corpus document whose
``_id`` is the query's is never retrieved for it; a task's ``ignore_identical_ids: false`` keeps it. The figures
are worked out by hand from the colour embedder (`tests.eval.helpers.FakeEmbedder`)."""

from __future__ import annotations

import math

import pytest

from unime.errors import DataError
from unime.eval.tasks import load_task_config


def own_id_world(root, judgements, option=""):
    """A BEIR folder whose corpus holds the query itself under the query's id: 'q1' ("red", cosine 1 with the query
    "red"), then 'd2' ("red blue", 1/sqrt 2) and 'd3' ("blue", 0)."""
    from tests.eval.helpers import write_beir

    write_beir(root / "beir", [{"_id": "q1", "text": "red"}, {"_id": "d2", "text": "red blue"},
                               {"_id": "d3", "text": "blue"}], [{"_id": "q1", "text": "red"}], judgements)
    cfg = root / "c.yaml"
    cfg.write_text("tasks:\n  - {name: b, format: qrels, path: beir, ks: [1, 2]" + option + "}\n")
    return cfg


def test_a_beir_query_does_not_retrieve_the_document_with_its_own_id(tmp_path):
    from tests.eval.helpers import FakeEmbedder
    from unime.eval.runners import EvalOptions, load_suite_data, run_tasks
    from unime.models.embedding_cache import RunEncoder

    def scored(cfg):
        out = run_tasks(load_suite_data(load_task_config(cfg)), RunEncoder(FakeEmbedder(), "fake"),
                        opts=EvalOptions(run_depth=3))
        return out.results[0]

    # BEIR drops 'q1' from q1's results: 'd2' (relevant) is first
    r = scored(own_id_world(tmp_path, "q1\td2\t1\n"))
    assert r.metrics == {"ndcg@1": 1.0, "ndcg@2": 1.0, "recall@1": 1.0, "recall@2": 1.0, "mrr": 1.0, "map": 1.0}
    assert [d for d, _ in r.run[0][1]] == ["d2", "d3"]  # and from the run file
    # kept (ignore_identical_ids: false): 'q1' first, 'd2' second
    r = scored(own_id_world(tmp_path, "q1\td2\t1\n", ", ignore_identical_ids: false"))
    assert r.metrics == pytest.approx({"ndcg@1": 0.0, "ndcg@2": 1 / math.log2(3), "recall@1": 0.0, "recall@2": 1.0,
                                       "mrr": 0.5, "map": 0.5})
    assert [d for d, _ in r.run[0][1]] == ["q1", "d2", "d3"]
    # judged relevant itself: never retrieved, but in the ideal ranking and the relevant total, as BEIR's qrels
    r = scored(own_id_world(tmp_path, "q1\tq1\t1\nq1\td2\t1\n"))
    assert r.metrics["ndcg@1"] == 1.0 and r.metrics["recall@1"] == r.metrics["recall@2"] == 0.5
    assert r.metrics["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    with pytest.raises(DataError, match="must be true or false"):
        load_task_config(own_id_world(tmp_path, "q1\td2\t1\n", ", ignore_identical_ids: 'no'"))
