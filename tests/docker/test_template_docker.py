"""Templates on the docker provider, and the ``docker:`` base, against the real engine.

The template is a slim Python image exported through ``docker:`` (a base layer) plus a layer
on top as a step leaves one (an overlay upper folder: a new file, and a whiteout deleting one
of the base's files). A docker sandbox of it runs the engine image sandlot imports from the
merged layers, once per template.

The slim image (tests/registry.py's slim tree, 44 MB) keeps the export and import this
exercises to seconds; it is built once per engine, like the other test images."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker_env
import pytest
from registry import (
    PYTHON_ENV,
    PYTHON_WORKDIR,
    Registry,
    write_slim_tar,
)

import sandlot
from sandlot.errors import InvalidArgumentError
from sandlot.models import SandboxSpec
from sandlot.workspace.templates import BaseInfo, TemplateManifest, TemplateStore, find_python
from sandlot.workspace.templates.image_bases import ImportedBase, prepare_image_base
from sandlot.workspace.templates.layers import make_whiteout

NAME = "docker-test-tpl"
DELETED = "etc/passwd"  # in the base, whited out by the top layer
SLIM = "sandlot-test-slim-python:v1"  # the same tree as registry.python_image


def home() -> Path:
    return Path(os.environ["SANDLOT_HOME"])


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


def build_slim_image() -> None:
    """SLIM on the engine (skipped if it exists)."""
    if docker_env.image_exists(SLIM):
        return
    load = subprocess.Popen(["docker", "import", "-", SLIM], stdin=subprocess.PIPE)
    assert load.stdin is not None
    write_slim_tar(load.stdin)  # type: ignore[arg-type]
    load.stdin.close()
    assert load.wait() == 0


@pytest.fixture(scope="module")
def docker_base() -> ImportedBase:
    build_slim_image()
    return asyncio.run(prepare_image_base("docker", SLIM, TemplateStore(home())))


@pytest.fixture(scope="module")
def template(docker_base: ImportedBase) -> Iterator[str]:
    """The docker: base plus one step-like layer, saved under NAME; its engine image removed
    afterwards (the next run imports it again)."""
    store = TemplateStore(home())
    upper = store.tmp_dir("test-upper-") / "root"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "template-marker").write_text("from the top layer\n")
    make_whiteout(str(upper / DELETED))
    top = store.add_layer(upper, "ab" * 32)
    base = store.layer(docker_base.layer_id)
    lowers = [store.layer_dir(top.id) / "root", store.layer_dir(base.id) / "root"]
    manifest = TemplateManifest(
        name=NAME,
        base=BaseInfo(kind="docker", ref=SLIM, digest=docker_base.digest),
        layers=[base, top],
        env={"TEMPLATE_VAR": "from-the-template"},
        python=find_python(lowers, False),
    )
    digest = store.save(manifest)
    yield digest
    docker("image", "rm", "-f", f"sandlot-template:{digest[:12]}")


def test_docker_base_is_the_image_exported(docker_base: ImportedBase) -> None:
    image_id = docker("image", "inspect", "--format", "{{.Id}}", SLIM).stdout.strip()
    assert docker_base.digest == image_id
    root = TemplateStore(home()).layer_dir(docker_base.layer_id) / "root"
    assert (root / "usr" / "bin" / "python3.11").is_file()
    assert (root / DELETED).is_file()
    assert not (root / "dev" / "null").exists() or not (root / "dev" / "null").is_char_device()
    again = asyncio.run(prepare_image_base("docker", SLIM, TemplateStore(home())))
    assert again.reused and again.layer_id == docker_base.layer_id


async def test_a_docker_sandbox_from_a_template_sees_its_files(template: str) -> None:
    store = TemplateStore(home())
    spec = SandboxSpec(provider="docker", template=NAME, env={"MINE": "1"})
    async with await sandlot.AsyncSandbox._create(spec, None) as sb:
        assert sb.info.provider == "docker"
        result = await sb.commands.run(
            f"cat /etc/template-marker; test -e /{DELETED} || echo deleted; "
            'echo "$TEMPLATE_VAR $MINE"'
        )
        assert result.stdout == "from the top layer\ndeleted\nfrom-the-template 1\n", result
        container = sb.info.handle["container"]
        image = docker("inspect", "--format", "{{.Config.Image}}", container).stdout.strip()
        assert image == f"sandlot-template:{template[:12]}"
        assert store.pins().get(sb.id) == template  # gc keeps its layers meanwhile
        # Writes stay in the sandbox: the root is read-only, the template untouched.
        denied = await sb.commands.run("echo x > /etc/template-marker")
        assert denied.exit_code != 0
    assert sb.id not in store.pins()
    # No image setting at all (not even the operator's default): the template's is the image.
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SANDLOT_PROVIDER_CONFIG")
        bare = SandboxSpec(provider="docker", template=NAME)
        async with await sandlot.AsyncSandbox._create(bare, None) as third:
            assert (await third.commands.run("cat /etc/template-marker")).exit_code == 0
        with pytest.raises(InvalidArgumentError, match="image: required unless"):
            await sandlot.AsyncSandbox._create(SandboxSpec(provider="docker"), None)
    # A second sandbox uses the image made for the first (one import per template).
    created = docker("image", "inspect", "--format", "{{.Created}}", image).stdout
    async with await sandlot.AsyncSandbox._create(spec, None) as again:
        assert (await again.commands.run("cat /etc/template-marker")).exit_code == 0
    assert docker("image", "inspect", "--format", "{{.Created}}", image).stdout == created


async def test_a_host_based_template_is_refused_on_docker() -> None:
    store = TemplateStore(home())
    store.save(TemplateManifest(name="docker-test-hosty", base=BaseInfo(kind="host")))
    spec = SandboxSpec(provider="docker", template="docker-test-hosty")
    with pytest.raises(InvalidArgumentError, match="built on the host"):
        await sandlot.AsyncSandbox._create(spec, None)


async def test_a_docker_sandbox_from_an_oci_template_pulled_without_the_engine(
    python_image: str,
    registry: Registry,
) -> None:
    """The image is pulled and unpacked with skopeo and umoci while no engine is reachable
    (DOCKER_HOST points nowhere); the template made of it then runs on docker, with the
    image's environment and working folder and its own python3."""
    store = TemplateStore(home())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCKER_HOST", f"unix://{home()}/no-engine.sock")
        base = await prepare_image_base("oci", python_image, store)
    assert base.digest == registry.manifest_digest("sandlot/slim-python", "1")
    assert {k: base.env[k] for k in PYTHON_ENV} == PYTHON_ENV
    assert base.workdir == PYTHON_WORKDIR
    layer = store.layer(base.layer_id)
    manifest = TemplateManifest(
        name="docker-test-oci",
        base=BaseInfo(kind="oci", ref=python_image, digest=base.digest),
        layers=[layer],
        env=base.env,
        workdir=base.workdir,
        python=find_python([store.layer_dir(layer.id) / "root"], False),
    )
    digest = store.save(manifest)
    try:
        spec = SandboxSpec(provider="docker", template="docker-test-oci")
        async with await sandlot.AsyncSandbox._create(spec, None) as sb:
            result = await sb.commands.run(
                "pwd; echo $OCI_VAR; python3 -c 'import sys; print(sys.version_info[:2])'"
            )
        assert result.stdout == "/usr/lib\nfrom-the-image\n(3, 11)\n", result
    finally:
        docker("image", "rm", "-f", f"sandlot-template:{digest[:12]}")
