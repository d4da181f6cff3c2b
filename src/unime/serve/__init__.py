"""`unime serve`: a retrieval service for trained embedders and rerankers (FastAPI + uvicorn).

- `config`: every limit and option (`ServeConfig`).
- `inputs`: request items → `Item`s; images only as inline `data:` URIs, checked for size and pixels
  before decoding (the service never reads a file or fetches a URL named by a request).
- `batching`: dynamic batching — concurrent requests coalesced into encoder batches.
- `engine`: the models (embedder, optional reranker, optional index) behind the endpoints.
- `auth`, `metrics`: Bearer API keys compared in constant time; Prometheus metrics.
- `app`: the FastAPI application (OpenAI embeddings, Cohere/Jina rerank, search, health, metrics, page).
- `docs`: GET /docs, a reference of the endpoints rendered from the OpenAPI schema (no scripts: reads offline).
- `runner`: uvicorn (graceful SIGTERM drain) and Ray Serve (`--ray --replicas N`).

Layer: above models and index, beside mining and eval; only `unime.cli` imports it.
"""
