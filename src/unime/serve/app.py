"""The FastAPI application: `create_app(engine, config)`.

Endpoints: POST /v1/embeddings (OpenAI), POST /v1/rerank (Cohere/Jina), POST /v1/search, GET /health,
GET /metrics (Prometheus), GET / (search page); a reference of the endpoints at /docs (rendered here from the
OpenAPI schema, /openapi.json; Swagger UI, which loads its scripts from a CDN, at /docs/swagger; /redoc goes to
/docs). /v1/* and /metrics need a Bearer key unless auth is off. Every error is a JSON body ``{"error": {"message",
"type", "param", "code"}}`` with a 4xx status (5xx only for the server's own faults, without a traceback).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import re
import time
from contextlib import asynccontextmanager
from importlib import resources

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from unime.errors import DataError
from unime.serve.auth import bearer_token, key_matches
from unime.serve.batching import DynamicBatcher
from unime.serve.config import ServeConfig
from unime.serve.docs import reference_html
from unime.serve.engine import Engine, listwise_order
from unime.serve.index_reload import IndexReloader
from unime.serve.inputs import RequestError, to_item
from unime.serve.metrics import Metrics
from unime.serve.schemas import (EmbeddingsRequest, EmbeddingsResponse, RerankRequest, RerankResponse, SearchRequest,
                                 SearchResponse)

log = logging.getLogger("unime.serve")


def error_body(status: int, message: str, type: str = "invalid_request_error", param=None, code=None) -> dict:
    """OpenAI's error object: `code` a string (e.g. "model_not_found") or null, never the HTTP status (the
    response's own status code carries it)."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}, "message": message}


def _json_error(status: int, message: str, headers: dict | None = None, **kw) -> JSONResponse:
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONResponse(error_body(status, message, **kw), status_code=status, headers=headers)


def _unreadable_indexed_item(e: DataError, hits: list[dict]) -> RequestError:
    """The 500 of a reranked search one of whose hits the reranker cannot read (`e`, its field `candidates[i]...`):
    an image under the index's data root deleted or damaged since the build. Named and logged in one line."""
    m = re.match(r"candidates\[(\d+)\]", e.field or "")
    which = f"the indexed item {hits[int(m.group(1))]['id']!r}" if m and int(m.group(1)) < len(hits) else \
        "an indexed item"
    why = str(e).split(": ", 1)[1] if e.field else str(e)
    message = (f"rerank: {which} cannot be read by the reranker ({why}); its image is missing or damaged under the "
               "reranker's data root (the index's, or --rerank-data-root): rebuild the index (`unime index build`) or "
               "point --rerank-data-root at the folder of the indexed images")
    log.error("%s", message)
    return RequestError(500, message, type="server_error", param="rerank")


SHUTDOWN_RETRY_AFTER_S = 5  # what a request cut by the shutdown is told to wait before retrying (Retry-After)


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` (413), by Content-Length or while reading, and bodies not
    received in full within `timeout_s` (408, the connection closed): a client that sent half its body and waited
    held its request open for good (QA), the request timeout counting only from a whole body."""

    def __init__(self, app, max_bytes: int, timeout_s: float | None = None):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = _json_error(413, f"request body over the limit of {self.max_bytes} bytes (the server's "
                                   "--max-body-bytes; an inline image or video takes 4/3 of its bytes in base64)",
                              type="request_too_large")
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    if int(v) > self.max_bytes:
                        return await too_big(scope, receive, send)
                except ValueError:
                    return await _json_error(400, "bad Content-Length header")(scope, receive, send)
        chunks, total, more = [], 0, True
        deadline = None if self.timeout_s is None else asyncio.get_running_loop().time() + self.timeout_s
        while more:
            try:
                msg = await asyncio.wait_for(receive(), None if deadline is None else
                                             max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                return await _json_error(408, f"request body not received in full within {self.timeout_s:g} s (the "
                                              "server's --request-timeout)", type="timeout",
                                         code="request_body_timeout", headers={"Connection": "close"})(
                    scope, receive, send)
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await too_big(scope, receive, send)
            more = msg.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class Observe:
    """ASGI middleware: request count, error count and latency per endpoint, requests in flight; an
    exception that escaped everything else becomes a JSON 500 without a traceback. A request cancelled once
    the server shuts down (`shutting_down()`: uvicorn cancels those still running past --graceful-timeout) is
    answered 503 "server shutting down" with Retry-After: uvicorn answered each with a 500 and its traceback (QA).
    Any other cancellation propagates. The log says once what cut them: the graceful timeout, or the second signal
    that forced the exit (`forced_by()`: e.g. "Ctrl-C (SIGINT)"; None: no signal forced it), which cuts them before
    the timeout runs out."""

    def __init__(self, app, metrics: Metrics, shutting_down=lambda: False, forced_by=lambda: None):
        self.app, self.metrics, self.shutting_down, self.forced_by = app, metrics, shutting_down, forced_by
        self.cut_by_shutdown = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        m = self.metrics
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = {"code": 500, "started": False}
        t0 = time.perf_counter()

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                status["code"], status["started"] = msg["status"], True
            await send(msg)

        m.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except asyncio.CancelledError:
            if status["started"] or not self.shutting_down():
                raise
            # the request's own task, cancelled by the server's shutdown: the cancellation ends here, at its top
            task = asyncio.current_task()
            if hasattr(task, "uncancel"):  # Python 3.11+ counts cancellations (3.10 does not)
                task.uncancel()
            self.cut_by_shutdown += 1
            if self.cut_by_shutdown == 1:  # one line, not one per request (uvicorn's own line gives the count)
                forced = self.forced_by()
                log.warning(f"shutting down: a second {forced} forced the exit: the requests still running are "
                            "answered 503" if forced else
                            "shutting down: the requests still running after the graceful timeout are answered 503")
            await _json_error(503, "server shutting down", type="unavailable", code="server_shutting_down",
                              headers={"Retry-After": str(SHUTDOWN_RETRY_AFTER_S)})(scope, receive, send_wrapper)
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("unhandled error on %s", scope["path"])
            if not status["started"]:
                await _json_error(500, "internal server error", type="server_error")(scope, receive, send_wrapper)
        finally:
            m.in_flight.dec()
            code = str(status["code"])
            m.requests.labels(endpoint, code).inc()
            if status["code"] >= 400:
                m.errors.labels(endpoint, code).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - t0)


def create_app(engine: Engine, config: ServeConfig) -> FastAPI:
    max_tokens = config.limits.max_text_tokens
    if engine.context_tokens is not None:  # never more than the models are built for
        max_tokens = min(max_tokens, engine.context_tokens)
    limits = dataclasses.replace(config.limits, max_aspect_ratio=engine.max_aspect_ratio, max_text_tokens=max_tokens)
    metrics = Metrics()
    batcher = DynamicBatcher(engine.encode, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms,
                             executor=engine.executor, on_batch=lambda n: metrics.batch_size.observe(n))
    metrics.queue_depth.set_function(batcher.depth)
    # listwise rerank requests share the reranker's batched generation
    picker = DynamicBatcher(engine.pick_many, max_batch_size=engine.reranker.batch_size,
                            max_wait_ms=config.max_wait_ms, executor=engine.executor,
                            on_batch=lambda n: metrics.rerank_batch_size.observe(n)) if engine.reranker else None

    # a build that appends to the served index (`unime index build --out IDX`) is loaded and swapped in
    reloader = IndexReloader(engine, model=config.model, dtype=config.dtype, interval_s=config.index_check_s,
                             fixed_rerank_root=engine.reranker is not None and config.rerank_data_root is None) \
        if engine.index is not None and config.index_check_s > 0 else None

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        if picker is not None:
            picker.start()
        watching = asyncio.get_running_loop().create_task(reloader.run()) if reloader is not None else None
        log.info("serving %s (dim %d)%s%s", engine.model_name, engine.dim,
                 f", reranker {engine.reranker_name}" if engine.reranker else "",
                 f", index of {len(engine.index)} items" if engine.index is not None else "")
        yield
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await batcher.stop()  # uvicorn has drained the in-flight requests before this point
        if picker is not None:
            await picker.stop()

    # /docs is rendered here from the schema (`unime.serve.docs`): FastAPI's Swagger UI and ReDoc, blank pages offline
    app = FastAPI(title="unime", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Embeddings (OpenAI schema), rerank (Cohere/Jina schema) and search with unime models.")
    app.state.engine, app.state.metrics, app.state.batcher = engine, metrics, batcher
    app.state.shutting_down = False  # set by the server that runs the app when it starts to stop (`runner`)
    app.state.forced_by = None  # the second signal that forced its exit, "Ctrl-C (SIGINT)" or "SIGTERM" (`runner`)

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    # inside `Observe`: 413s and 408s are counted too
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout_s=limits.request_timeout_s)
    app.add_middleware(Observe, metrics=metrics, shutting_down=lambda: app.state.shutting_down,
                       forced_by=lambda: app.state.forced_by)

    @app.exception_handler(RequestError)
    async def _request_error(request, exc: RequestError):
        return _json_error(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        if isinstance(exc.body, (bytes, bytearray)):  # FastAPI reads a body as JSON only under a JSON content type
            got = request.headers.get("content-type")
            return _json_error(415, "send the JSON body with 'Content-Type: application/json' "
                                    f"(got {repr(got) if got else 'none'})", param="body")
        errs = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errs):
            return _json_error(400, "malformed JSON body: " + "; ".join(
                str(e.get("ctx", {}).get("error", e.get("msg"))) for e in errs if e.get("type") == "json_invalid"))
        parts = []
        for e in errs[:10]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{loc or 'body'}: {e.get('msg')}")
        return _json_error(422, "invalid request: " + "; ".join(parts), param=parts[0].split(":")[0] if parts else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "There was an error parsing the body"
            e = exc.__cause__
            return _json_error(400, f"malformed JSON body: not UTF-8 (byte 0x{e.object[e.start]:02x} at position "
                                    f"{e.start})", param="body")
        return _json_error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return _json_error(500, "internal server error", type="server_error")

    async def require_key(request: Request):
        if config.no_auth:
            return
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise RequestError(401, "missing API key: send 'Authorization: Bearer <key>'", type="authentication_error")
        if not key_matches(token, config.api_keys):
            raise RequestError(401, "invalid API key", type="authentication_error")

    def check_model(name: str | None, served: str | None, what: str) -> str:
        if served is None:
            raise RequestError(404, f"this server has no {what}", type="not_found_error")
        if name is not None and name != served:
            raise RequestError(404, f"model {name!r} not found; this server's {what} is {served!r}",
                               type="not_found_error", param="model", code="model_not_found")
        return served

    def item(x, field: str, instruction: str | None = None, read_by: tuple[str, ...] = ("embedder",)):
        """`to_item` under the service's limits, its text's tokens counted by the tokenizer of each model that reads
        it (`read_by`: "embedder", "reranker"; the most of them is held to the limit)."""
        return to_item(x, limits, field, instruction=instruction,
                       count_tokens=lambda text: max(engine.count_tokens(text, m) for m in read_by),
                       video_loaders=[getattr(engine, m).image_loader for m in read_by])

    async def decoded(convert):
        """`convert()`, a request's conversion of its inputs to items (`item`: base64, image and video decoding,
        token counts), on a worker thread: an inline video of up to --max-video-bytes decoded on the event loop held
        /health, /metrics and every other request behind it. Not on the model thread either, where it would wait
        for the model. Its `RequestError`s are raised here as they were."""
        return await asyncio.to_thread(convert)

    def check_count(n: int, field: str) -> None:
        if n == 0:
            raise RequestError(400, f"{field}: empty input list", param=field)
        if n > limits.max_items:
            raise RequestError(413, f"{field}: {n} items, over the limit of {limits.max_items} per request",
                               param=field)

    async def run_model(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(engine.executor, fn, *args)

    async def rerank_docs(query, docs, mode):
        """(order, score per document, listwise source, tokens the model read) of `docs` for `query`: pairwise on
        the model thread (source None), listwise through the pick batcher (source "answer", or "fallback" when the
        model's answer named no document and the pairwise scores' argmax was picked; logged and counted in
        /metrics)."""
        if mode == "pairwise":
            order, scores, tokens = await run_model(engine.rerank_pairwise, query, docs)
            return order, scores, None, tokens
        pick, = await picker.submit_each([(query, docs)])
        metrics.listwise_picks.labels(pick.source).inc()
        if pick.source == "fallback":
            log.warning("listwise rerank: the reranker's answer named none of the %d documents; document %d, the "
                        "pairwise scores' argmax, is put first (meta.listwise = \"fallback\")", len(docs), pick.index)
        return (*listwise_order(pick.index, len(docs)), pick.source, pick.tokens)

    async def embed(items, fields):
        """(embeddings (n, d), tokens the model read for them) of `items` (named `fields` in errors), through the
        encoder batcher. A vector holding NaN or inf is the model's fault: a 500 naming the input, not one FAISS's
        check (search) or the JSON encoder (embeddings) raises, answered "internal server error"."""
        encoded = await batcher.submit_each(items)
        vecs = np.stack([e.vector for e in encoded])
        bad = np.flatnonzero(~np.isfinite(vecs).all(axis=1))
        if len(bad):
            field = fields[int(bad[0])]
            log.error("%s: the embedding model returned NaN or inf (%d of the request's %d inputs)", field, len(bad),
                      len(items))
            raise RequestError(500, f"{field}: the embedding model returned NaN or inf for this input (a model fault)",
                               type="server_error", param=field, code="non_finite_embedding")
        return vecs, sum(e.tokens for e in encoded)

    async def until_disconnected(request: Request) -> None:
        """Returns once the client of `request` (whose body was read) has gone away."""
        try:
            while (await request.receive())["type"] != "http.disconnect":
                await asyncio.sleep(0.1)  # a server that answers at once with nothing more: no busy loop
        except Exception:  # noqa: BLE001 - a server whose receive cannot tell: the request timeout still holds
            await asyncio.Event().wait()

    async def with_timeout(coro, request: Request):
        """`coro`'s result; after the request timeout a 503, and when the client disconnects, its work is cancelled:
        either way the request's items still queued for the model are dropped (`DynamicBatcher._collect`), not
        encoded for nobody while the requests behind them wait (QA: a request that timed out held its successors)."""
        work = asyncio.ensure_future(coro)
        gone = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=limits.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            work.cancel()  # nothing if it finished
        if work in done:
            return work.result()
        if gone in done:
            raise RequestError(499, "the client closed the request", type="client_closed_request")
        raise RequestError(503, f"request timed out after {limits.request_timeout_s} s", type="timeout")

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=[Depends(require_key)],
              summary="Embeddings of texts, inline images and inline videos (OpenAI's schema)")
    async def embeddings(req: EmbeddingsRequest, request: Request):
        model = check_model(req.model, engine.model_name, "embedding model")
        raw = req.input if isinstance(req.input, list) else [req.input]
        check_count(len(raw), "input")
        if req.dimensions is not None and req.dimensions != engine.dim:
            raise RequestError(400, f"dimensions: this model gives {engine.dim}-d embeddings, not {req.dimensions}",
                               param="dimensions")
        fields = [f"input[{i}]" for i in range(len(raw))]
        items = await decoded(lambda: [item(x, f, req.instruction) for x, f in zip(raw, fields)])
        vecs, tokens = await with_timeout(embed(items, fields), request)
        metrics.items.labels("embedded").inc(len(items))
        data = []
        for i, v in enumerate(np.asarray(vecs, dtype=np.float32)):
            emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" \
                else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        return JSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @app.post("/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True,
              dependencies=[Depends(require_key)],
              summary="Documents ordered by the reranker for a query (Cohere/Jina's schema), pairwise or listwise")
    async def rerank(req: RerankRequest, request: Request):
        model = check_model(req.model, engine.reranker_name, "reranker")
        check_count(len(req.documents), "documents")
        # the reranker reads them (not the embedder, whose tokenizer may count otherwise)
        query, docs = await decoded(lambda: (
            item(req.query, "query", req.instruction, read_by=("reranker",)),
            [item(d, f"documents[{i}]", read_by=("reranker",)) for i, d in enumerate(req.documents)]))
        order, scores, source, tokens = await with_timeout(rerank_docs(query, docs, req.mode), request)
        metrics.items.labels("reranked").inc(len(docs))
        results = []
        for i in order[:req.top_n or len(order)]:
            r = {"index": i, "relevance_score": float(scores[i])}
            if req.return_documents:
                d = req.documents[i]
                r["document"] = {"text": d} if isinstance(d, str) else d.model_dump(exclude_none=True)
            results.append(r)
        return {"model": model, "results": results, "usage": {"total_tokens": tokens},
                "meta": {"listwise": source} if source else None}

    @app.post("/v1/search", response_model=SearchResponse, response_model_exclude_none=True,
              dependencies=[Depends(require_key)],
              summary="The index's nearest items to a query, optionally reranked (needs --index)")
    async def search(req: SearchRequest, request: Request):
        index = engine.index  # one state of the index for the whole request (`IndexReloader` swaps it)
        if index is None:
            raise RequestError(404, "this server has no index (start it with --index IDX)", type="not_found_error")
        model = check_model(req.model, engine.model_name, "embedding model")
        for name in ("top_k", "rerank_top_k") if req.rerank else ("top_k",):  # the more of them are retrieved
            if (getattr(req, name) or 0) > limits.max_top_k:
                raise RequestError(400, f"{name}: {getattr(req, name)} is over the limit of {limits.max_top_k}",
                                   param=name)
        if req.rerank and engine.reranker is None:
            raise RequestError(400, "rerank: this server has no reranker (start it with --reranker R)", param="rerank")
        query = await decoded(lambda: item(req.query, "query", req.instruction,
                                           read_by=("embedder", "reranker") if req.rerank else ("embedder",)))
        from unime.index.store import search_items

        async def work():
            qv, _ = await embed([query], ["query"])
            # the top rerank_top_k are reranked, the best top_k returned: a rerank_top_k over top_k reranked only
            # the top_k hits retrieved (QA)
            rerank_k = (req.rerank_top_k or req.top_k) if req.rerank else 0
            hits, source = search_items(index, qv, max(req.top_k, rerank_k))[0], None
            if rerank_k and hits:
                k = min(rerank_k, len(hits))
                cands = [index.item(h["row"]) for h in hits[:k]]
                try:
                    order, scores, source, _ = await rerank_docs(query, cands, req.rerank_mode)
                except DataError as e:  # an indexed image the reranker reads from the index's data root went bad
                    raise _unreadable_indexed_item(e, hits[:k]) from None
                top = [dict(hits[i], rerank_score=float(scores[i])) for i in order]
                hits = top + hits[k:]
            return hits[:req.top_k], source

        hits, source = await with_timeout(work(), request)
        for r, h in enumerate(hits, 1):
            h["rank"] = r
            if not req.include_thumbnails:
                h.pop("thumbnail", None)
        return {"object": "list", "model": model, "reranked": bool(req.rerank and engine.reranker is not None),
                "listwise": source, "data": hits}

    @app.get("/health", summary="The served models, index size, queue depth, device")
    async def health():
        import torch

        return {"status": "ok", "model": engine.model_name, "dim": engine.dim, "reranker": engine.reranker_name,
                "index_items": len(engine.index) if engine.index is not None else None,
                "index_warning": reloader.warning if reloader is not None else None,
                "auth": not config.no_auth, "queue_depth": batcher.depth(), "pid": os.getpid(),
                "device": str(engine.embedder.device), "torch_threads": torch.get_num_threads()}

    @app.get("/metrics", dependencies=[Depends(require_key)], summary="Prometheus metrics (text format)")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    page = resources.files("unime.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page():
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs_page(request: Request):
        root = request.scope.get("root_path", "")
        return HTMLResponse(reference_html(app.openapi(), openapi_url=root + app.openapi_url,
                                           swagger_url=root + "/docs/swagger"))

    # FastAPI's ReDoc page loads its script from a CDN (blank offline): its address goes to /docs, which reads offline
    @app.get("/redoc", include_in_schema=False)
    async def redoc_page(request: Request):
        return RedirectResponse(request.scope.get("root_path", "") + "/docs")

    @app.get("/docs/swagger", response_class=HTMLResponse, include_in_schema=False)
    async def swagger_page(request: Request):
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + app.openapi_url,
                                   title=f"{app.title} - Swagger UI")

    return app


ENDPOINTS = {"/v1/embeddings", "/v1/rerank", "/v1/search", "/health", "/metrics", "/"}
