"""Sources: dataset directories, manifests, brace patterns, pipe: commands, http(s) URLs,
and the built-in corpus prepared on first use."""

from __future__ import annotations

import functools
import http.server
import multiprocessing
import threading

import pytest
from dp_helpers import gpt_rows, take

from data_pipeline import DataError, build_loader, prepare_source, resolve_source
from data_pipeline.builtin import prepare_builtin

pytestmark = pytest.mark.timeout(180)


def _rows(source, **kw):
    loader = build_loader("gpt", source, batch_size=4, seq_len=5, seed=1, infinite=False, **kw)
    return [r for b in take(loader) for r in gpt_rows(b)]


def test_brace_pattern_pipe_and_manifest_sources_agree(token_ds):
    path, _ = token_ds
    expected = _rows(str(path))
    pattern = f"{path}/train-{{000000..000002}}.tar"
    assert len(resolve_source(pattern, "train").shards) == 3
    assert _rows(pattern) == expected
    assert _rows(f"pipe:cat {pattern}") == expected
    assert _rows(str(path / "manifest.json")) == expected
    # a subset of shards is just those shards
    assert len(_rows(f"{path}/train-{{000000..000001}}.tar")) < len(expected)


@pytest.fixture
def http_base(token_ds):
    """The dataset served over http by a local server on 127.0.0.1 (stopped afterwards)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(token_ds[0]))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_http_source(token_ds, http_base, tmp_path):
    path, _ = token_ds
    expected = _rows(str(path))
    url = f"{http_base}/train-{{000000..000002}}.tar"
    assert _rows(url, tokenizer=str(path / "tokenizer.model")) == expected
    # without a configured tokenizer, the dataset's own copy is fetched into the cache
    assert _rows(f"{http_base}/manifest.json", cache_dir=str(tmp_path / "c")) == expected
    assert list((tmp_path / "c" / "tokenizers").glob("*.model"))


def test_unknown_sources_are_clear_errors(tmp_path, token_ds):
    with pytest.raises(DataError, match="manifest not found"):
        resolve_source(str(tmp_path), "train")
    with pytest.raises(DataError, match="train-000009.tar is not listed"):
        resolve_source(f"{token_ds[0]}/train-000009.tar", "train")
    with pytest.raises(DataError, match="no shards for split 'val'"):
        resolve_source(str(token_ds[0]), "val")
    with pytest.raises(DataError, match="unknown built-in"):
        prepare_source("builtin:nope", cache_dir=str(tmp_path))
    with pytest.raises(DataError, match="describes text shards"):
        build_loader("vit", str(token_ds[0]))


def _prepare(cache, results):
    results.put(str(prepare_builtin("stdlib-mini", cache)))


def test_builtin_corpus_prepared_once_and_cached(tmp_path):
    cache = tmp_path / "cache"
    # two processes preparing at once: one builds, the other waits and reuses it
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_prepare, args=(cache, results)) for _ in range(2)]
    for p in procs:
        p.start()
    paths = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert paths[0] == paths[1]
    prepared = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert [str(p) for p in prepared] == [paths[0]]
    assert prepare_source("builtin:stdlib-mini", cache_dir=str(cache)) == paths[0]
    loader = build_loader(
        "gpt", "builtin:stdlib-mini", cache_dir=str(cache), batch_size=2, seq_len=32
    )
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (2, 32) and loader.vocab_size == 1024
    text = loader.tokenizer.decode(batch["input_ids"][0].tolist())
    assert len(text) > 32  # real Python source, decoded
    val = build_loader("gpt", "builtin:stdlib-mini", split="val", cache_dir=str(cache))
    assert val.items_per_epoch() > 0


def test_builtin_cache_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GOBIG_CACHE", str(tmp_path / "gc"))
    from data_pipeline.builtin import cache_root

    assert cache_root() == tmp_path / "gc" / "data"
