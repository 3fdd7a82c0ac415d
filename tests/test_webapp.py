import os

import yaml
from django.conf import settings


def staff_client(client):
    from django.contrib.auth import get_user_model

    client.force_login(get_user_model().objects.create_user("ops", is_staff=True))  # the detail is for staff
    return client


def test_health_endpoint_reaches_the_real_database_and_redis(client, db):
    r = staff_client(client).get("/healthz")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["database"] == "ok" and body["redis"] == "ok"
    # in CI DATABASE_URL points at PostgreSQL: the suite really runs against it
    expected = "postgresql" if "postgres" in settings.DATABASES["default"]["ENGINE"] else "sqlite"
    assert body["database_vendor"] == expected


def test_health_endpoint_names_redis_when_it_does_not_answer(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    r = staff_client(client).get("/healthz")
    assert r.status_code == 503 and r.json()["redis"].startswith("error")


def test_the_web_process_imports_no_torch_even_validating_a_config():
    import subprocess
    import sys

    code = (
        "import django, os, sys; os.environ['DJANGO_SETTINGS_MODULE']='webapp.settings'; django.setup(); "
        "import webapp.urls, webapp.asgi, worker.celery, webapp.experiments.tasks, webapp.studies.tasks; "
        "from webapp.experiments.forms import ExperimentForm; "
        "f = ExperimentForm({'name': 'x', 'backbone': 'tiny', 'reward': 'metrics'}); f.is_valid(); "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'cv2') if m in sys.modules]; "
        "sys.exit(f'imported {heavy}' if heavy else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_production_settings_pass_the_deploy_check():
    import subprocess
    import sys

    # without the browser tests' async-unsafe flag, whichever order the tests ran in
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(DEBUG="0", SECRET_KEY="x" * 20 + "-deploy-check-" + "y" * 30, ALLOWED_HOSTS="vpo.example")
    r = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        capture_output=True,
        text=True,
        env=env,
        cwd=settings.BASE_DIR,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_models_have_all_their_migrations(db):
    from django.core.management import call_command

    call_command("makemigrations", "--check", "--dry-run", verbosity=0)  # exits 1 if one is missing


def test_docker_compose_has_the_stores_web_and_both_workers_with_health_checks():
    compose = yaml.safe_load((settings.BASE_DIR / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "web", "ws", "proxy", "worker-gpu", "worker-cpu", "worker-vbench"}
    for name, service in services.items():
        assert "healthcheck" in service, name
    # nginx in front: HTTP to gunicorn, websockets to Daphne (tests/test_deploy.py runs that config)
    assert "gunicorn" in " ".join(services["web"]["command"]) and "daphne" in services["ws"]["command"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in services["proxy"]["volumes"]
    assert services["proxy"]["ports"] == ["8000:80"] and "ports" not in services["web"]
    gpu = services["worker-gpu"]
    assert gpu["command"][gpu["command"].index("-Q") + 1] == "gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert services["worker-cpu"]["command"][services["worker-cpu"]["command"].index("-Q") + 1] == "cpu"
    vb = services["worker-vbench"]  # the official VBench: its own queue, image and read-only weights
    assert vb["command"][vb["command"].index("-Q") + 1] == "vbench" and vb["build"]["args"]["WITH_VBENCH"] == "1"
    assert any(v.endswith(":/data/vbench:ro") for v in vb["volumes"]) and "media:/data/media" in vb["volumes"]
    for name in ("web", "worker-gpu", "worker-cpu"):  # one media volume shared by all three
        assert "media:/data/media" in services[name]["volumes"], name


def test_the_fleet_compose_files_put_one_gpu_worker_per_host_on_the_central_stores_and_shared_media():
    """docs/distributed.md "Many hosts": parsed, not run (no Docker here)."""
    host = yaml.safe_load((settings.BASE_DIR / "docker-compose.gpu-host.yml").read_text())
    (worker,) = host["services"].values()
    assert worker["command"][worker["command"].index("-Q") + 1] == "gpu" and "1" in worker["command"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"  # "GPUs per run"
    env = worker["environment"]
    assert "${VPO_CENTRAL" in env["DATABASE_URL"] and env["REDIS_URL"].startswith("redis://${VPO_CENTRAL}")
    assert "media:/data/media" in worker["volumes"] and env["MEDIA_ROOT"] == "/data/media"
    central = yaml.safe_load((settings.BASE_DIR / "docker-compose.central.yml").read_text())
    for volumes in (host["volumes"], central["volumes"]):  # the same NFS export on every host
        assert volumes["media"]["driver_opts"]["type"] == "nfs"
        assert volumes["media"]["driver_opts"]["device"] == ":${VPO_MEDIA_NFS_PATH:-/export/vpo-media}"
    assert central["services"]["postgres"]["ports"] and central["services"]["redis"]["ports"]
