"""Request and response bodies (pydantic): OpenAI embeddings, Cohere/Jina rerank, search.

A request's integers and booleans are strict (`StrictInt`, `StrictBool`): `"top_k": "3"`, `true` or `3.0` and
`"rerank": "yes"` or `1` are a 422 naming the field, not coerced (`true` was a top_k of 1). What OpenAI's and
Cohere's clients send (JSON integers and booleans) is what they accept."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator
from pydantic_core import PydanticCustomError


class MultimodalInput(BaseModel):
    """A text and/or inline images (`data:image/png;base64,...`) or an inline video (`data:video/mp4;base64,...`)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = Field(None, description="inline data URI: data:image/png;base64,...")
    images: list[str] | None = None
    video: str | None = Field(None, description="inline data URI of one clip: data:video/mp4;base64,... (sampled "
                                                "by the server's --video-* options)")


Input = Union[str, MultimodalInput]


class EmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Union[str, MultimodalInput, list[Input]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: str | None = None
    instruction: str | None = Field(None, description="put before every input's text, on its own line")

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, value):
        """OpenAI's schema also allows token IDs (`[1, 2, 3]`, `[[1, 2, 3]]`; LangChain's OpenAIEmbeddings sends them
        by default): one clear error for them, not pydantic's every union alternative (QA)."""
        if _token_ids(value) or (isinstance(value, list) and value and all(_token_ids(v) for v in value)):
            raise PydanticCustomError("token_ids", TOKEN_IDS_UNSUPPORTED)
        return value


TOKEN_IDS_UNSUPPORTED = "token-ID input is not supported; send text or multimodal items"


def _token_ids(value) -> bool:
    """A token ID (a JSON integer) or a non-empty list of them."""
    def is_id(v):
        return isinstance(v, int) and not isinstance(v, bool)

    return is_id(value) or (isinstance(value, list) and bool(value) and all(is_id(v) for v in value))


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Input
    documents: list[Input]
    model: str | None = None
    top_n: StrictInt | None = Field(None, ge=1)
    return_documents: StrictBool = False
    mode: Literal["pairwise", "listwise"] = "pairwise"
    instruction: str | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict | None = None


ListwiseSource = Literal["answer", "fallback"]
LISTWISE_SOURCE = ("where a listwise order came from: the model's answer, or a fallback to the pairwise scores' "
                   "argmax when the answer named no document")


class RerankMeta(BaseModel):
    listwise: ListwiseSource | None = Field(None, description=LISTWISE_SOURCE)


class RerankResponse(BaseModel):
    model: str
    results: list[RerankResult]
    usage: dict
    meta: RerankMeta | None = Field(None, description="listwise mode only")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Input
    model: str | None = None
    instruction: str | None = None
    top_k: StrictInt = Field(10, ge=1)
    rerank: StrictBool = False
    rerank_mode: Literal["pairwise", "listwise"] = "pairwise"
    rerank_top_k: StrictInt | None = Field(None, ge=1, description="how many of the top results to rerank (default "
                                              "top_k); more than top_k: that many are retrieved and reranked, the "
                                              "best top_k returned")
    include_thumbnails: StrictBool = True


class SearchHit(BaseModel):
    rank: int
    id: str
    score: float
    rerank_score: float | None = None
    item: dict
    metadata: dict
    thumbnail: str | None = None


class SearchResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    reranked: bool
    listwise: ListwiseSource | None = Field(None, description=LISTWISE_SOURCE + " (rerank_mode listwise only)")
    data: list[SearchHit]
