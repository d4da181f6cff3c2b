"""Vector indexes shared by mining's global retrieval and the retrieval service.

- `unime.index.ann`: FAISS indexes (exact `flat`, approximate `hnsw` / `ivf`), the size threshold
  above which an approximate index is chosen, and the recall@k of an approximate index against exact
  search measured on a sample.
- `unime.index.store`: an on-disk index of a corpus (`unime index build`): memory-mapped vectors
  (float32 or float16), the items' ids and metadata, the FAISS index and a manifest; resumable and
  append-only.

Layer: below mining and serving, above models (data → models → index → {mining, eval, reasoning, serve}).
"""
