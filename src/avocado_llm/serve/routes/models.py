"""``GET /v1/models`` and ``GET /v1/models/{model}``: the models this key may call."""

from __future__ import annotations

from fastapi import APIRouter

from avocado_llm.serve.deps import KeyDep, ServicesDep
from avocado_llm.serve.errors import model_not_found
from avocado_llm.serve.protocol import Model, ModelList

router = APIRouter()


def _visible(services: ServicesDep, key: KeyDep) -> list[Model]:
    name = services.engine.model
    if key.models is not None and name not in key.models:
        return []
    return [Model(id=name, created=services.started_at, owned_by="avocado")]


@router.get("/models", response_model=ModelList)
async def list_models(services: ServicesDep, key: KeyDep) -> ModelList:
    return ModelList(data=_visible(services, key))


@router.get("/models/{model:path}", response_model=Model)
async def retrieve_model(model: str, services: ServicesDep, key: KeyDep) -> Model:
    for card in _visible(services, key):
        if card.id == model:
            return card
    raise model_not_found(model)
