"""The coaching playbook over HTTP: what is in force, and a reload for operators.

The server also reloads the file by itself when it changes (or on SIGHUP); these endpoints
let an operator see which version live calls use and why an edit was refused.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request

from coach.api.security import require_principal
from coach.auth import Principal
from coach.cues.library import PlaybookLibrary

router = APIRouter(tags=["playbook"])
CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


def _library(request: Request) -> PlaybookLibrary:
    runtime = request.app.state.coach.runtime
    if runtime is None or runtime.playbook is None:
        raise HTTPException(503, "models are still loading")
    library: PlaybookLibrary = runtime.playbook
    return library


def _describe(library: PlaybookLibrary) -> dict[str, Any]:
    pb = library.current.playbook
    return {
        "path": str(library.path),
        "version": library.version,
        "reloads": library.reloads,
        "last_error": library.last_error,
        # Loaded, but an example sits in ordinary talk: the cue will rarely fire.
        "warnings": list(library.current.warnings),
        "cues": [
            {
                "cue": cue_id,
                "title": spec.title,
                "advice": spec.advice,  # what the next card says: an edit can be checked here
                "kind": spec.kind,
                "enabled": spec.enabled,
                "priority": spec.priority,
                "cooldown_s": spec.cooldown_s,
                "threshold": spec.threshold,
                "params": spec.params,
                "examples": len(spec.positives),
            }
            for cue_id, spec in pb.cues.items()
        ],
    }


@router.get("/api/playbook")
async def get_playbook(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """The playbook in force (supervisors and admins): version, cues, last refused edit."""
    if not principal.is_supervisor:
        raise HTTPException(403, "supervisors only")
    return _describe(_library(request))


@router.post("/api/playbook/reload")
async def reload_playbook(request: Request, principal: CurrentPrincipal) -> dict[str, Any]:
    """Reload the playbook file now (admins). 422 with the problems if it does not validate."""
    if principal.role != "admin":
        raise HTTPException(403, "admins only")
    library = _library(request)
    await asyncio.to_thread(library.reload)  # embeds the examples: keep the loop free
    if library.refused_now():
        raise HTTPException(422, library.last_error)
    return _describe(library)
