"""No deployment file carries a credential: keys, tokens and passwords come from deploy/.env or
the Kubernetes Secret at run time, and those are made from templates with empty values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.files import DEPLOY, DOCKERFILE, DOCKERIGNORE

# The shapes real credentials take, for the providers and services tollgate talks to.
CREDENTIAL_SHAPES = {
    "OpenAI / Anthropic / OpenAI-compatible key": r"\bsk-[A-Za-z0-9_-]{16,}",
    "Stripe secret key": r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{10,}",
    "Stripe webhook secret": r"\bwhsec_[A-Za-z0-9]{10,}",
    "Google API key": r"\bAIza[0-9A-Za-z_-]{30,}",
    "tollgate token": r"\btg_[A-Za-z0-9_]{16,}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    # A URL with a literal password (not ${...}, <placeholder> or empty).
    "password in a URL": r"://[^:/\s\"']+:(?![$<])[^@\s\"']+@",
    # 32 random bytes in base64, the shape of operator.master_key.
    "base64 master key": r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{43}=(?![A-Za-z0-9+/=])",
}


def deployment_files() -> list[Path]:
    files = [DOCKERFILE, DOCKERIGNORE, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]
    # deploy/.env and deploy/k8s/secret.yaml are an operator's filled-in copies (git-ignored).
    return [p for p in files if p.name not in (".env", "secret.yaml")]


@pytest.mark.parametrize("path", deployment_files(), ids=lambda p: p.name)
def test_no_credential_is_committed(path: Path) -> None:
    text = path.read_text()
    for what, shape in CREDENTIAL_SHAPES.items():
        found = re.search(shape, text)
        assert found is None, f"{path.name} holds what looks like a {what}: {found.group(0)!r}"


def test_the_scan_recognises_each_shape() -> None:
    samples = [
        "OPENAI_API_KEY=sk-proj-abcdefghijklmnop1234",
        "sk_live_abcdefghijkl1234",
        "whsec_abcdefghijklmnop",
        "AIzaSyA1234567890abcdefghijklmnopqrstu",
        "tg_0123456789abcdef0123",
        "-----BEGIN RSA PRIVATE KEY-----",
        "postgresql://tollgate:hunter2@db:5432/tollgate",
        "TOLLGATE_OPERATOR__MASTER_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ]
    for sample, shape in zip(samples, CREDENTIAL_SHAPES.values(), strict=True):
        assert re.search(shape, sample), sample
    assert not re.search(
        CREDENTIAL_SHAPES["password in a URL"], "postgresql://tollgate:${POSTGRES_PASSWORD}@db"
    )
