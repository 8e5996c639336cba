"""`manage.py demo`: everything on the embedded defaults, with live traffic, in one command."""

import itertools
import os
import random
import secrets
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.utils import timezone

from jobs.models import Consumer, JobType
from jobs.submission import submit_lines

DEMO_TYPES = [
    ("ai_analysis", "gpt-4o-mini", 5, "/v1/chat/completions"),
    ("summaries", "gpt-4.1-nano", 0, "/v1/chat/completions"),
    ("embeddings", "text-embedding-3-small", 0, "/v1/embeddings"),
]
TOPICS = ["a late delivery", "a refund request", "a login problem", "a billing question", "praise for support", "a bug report"]


class Command(BaseCommand):
    help = (
        "Run the demo: migrate, create an admin login (printed), start the sandbox provider, a django-q2 "
        "cluster and the web server, and feed demo traffic until Ctrl-C."
    )

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="Web server port (default 8000).")
        parser.add_argument("--sandbox-port", type=int, default=8787, help="Sandbox provider port (default 8787).")
        parser.add_argument("--rate", type=int, default=40, help="Demo requests submitted every 10 seconds (default 40).")
        parser.add_argument("--duration", type=float, default=0, help="Stop after this many seconds (default: run until Ctrl-C).")
        parser.add_argument("--error-rate", type=float, default=0.05, help="Share of lines the sandbox fails (default 0.05).")

    def handle(self, port, sandbox_port, rate, duration, error_rate, **options):
        sandbox_url = f"http://127.0.0.1:{sandbox_port}/v1"
        env = {
            **os.environ,
            "OPENAI_BASE_URL": sandbox_url,
            "OPENAI_API_KEY": os.environ.get("OPENAI_API_KEY", "sandbox"),
            # every minute, so the admin shows live batches within a minute
            "BATCH_CREATE_INTERVAL": "* * * * *",
            "BATCH_STATUS_CHECK_INTERVAL": "* * * * *",
            "BATCH_RESULT_PROCESSING_INTERVAL": "* * * * *",
            "BATCH_MIN_SIZE": "5",
        }
        manage = [sys.executable, os.path.join(settings.BASE_DIR, "manage.py")]
        # migrate in a child with the demo's settings, so post_migrate syncs the schedules to them
        subprocess.run([*manage, "migrate", "-v0"], env=env, check=True)
        username, password = self.admin_login()
        consumers, job_types = self.demo_data()
        children = [
            subprocess.Popen(
                [*manage, "sandbox_provider", "--port", str(sandbox_port), "--validating-seconds", "5",
                 "--in-progress-seconds", "40", "--finalizing-seconds", "5", "--line-error-rate", str(error_rate)],
                env=env,
            ),
            subprocess.Popen([*manage, "qcluster"], env=env),
            subprocess.Popen([*manage, "runserver", "--noreload", "--insecure", f"127.0.0.1:{port}"], env=env),
        ]
        self.stdout.write(
            self.style.SUCCESS(
                f"\nbatchmon demo: http://127.0.0.1:{port}/admin/  login {username} / {password}\n"
                f"sandbox provider at {sandbox_url}; demo traffic: {rate} requests every 10 s. Ctrl-C stops.\n"
            )
        )
        stop = time.monotonic() + duration if duration else None
        counter = itertools.count(int(time.time()))
        try:
            while stop is None or time.monotonic() < stop:
                self.feed(consumers, job_types, rate, counter)
                if any(child.poll() is not None for child in children):
                    self.stderr.write("a demo process stopped; shutting down")
                    break
                time.sleep(10 if stop is None else min(10, max(stop - time.monotonic(), 0)))
        except KeyboardInterrupt:
            pass
        finally:
            for child in children:
                child.send_signal(signal.SIGINT)
            for child in children:
                try:
                    child.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    child.kill()

    def admin_login(self):
        User = get_user_model()
        password = secrets.token_urlsafe(12)
        user, _ = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return user.username, password

    def demo_data(self):
        consumers = [Consumer.objects.filter(name=name).first() or Consumer.create_with_key(name)[0] for name in ("support-bot", "reporting")]
        job_types = []
        for name, model, priority, endpoint in DEMO_TYPES:
            job_type, _ = JobType.objects.get_or_create(
                name=name, defaults={"default_model": model, "priority": priority, "endpoint": endpoint}
            )
            job_types.append(job_type)
        return consumers, job_types

    def feed(self, consumers, job_types, rate, counter):
        now = timezone.now()
        for consumer in consumers:
            for job_type in job_types:
                lines = []
                for i in range(max(rate // (len(consumers) * len(job_types)), 1)):
                    n = next(counter)
                    topic = random.choice(TOPICS)
                    if job_type.endpoint == JobType.Endpoint.EMBEDDINGS:
                        body = {"model": job_type.default_model, "input": f"Customer message {n} about {topic}"}
                    else:
                        body = {
                            "model": job_type.default_model,
                            "messages": [
                                {"role": "system", "content": "You triage customer messages."},
                                {"role": "user", "content": f"Message {n}: the customer writes about {topic}. Classify and summarise."},
                            ],
                            "max_tokens": 120,
                        }
                    lines.append((i + 1, {"custom_id": f"demo-{job_type.name}-{n}", "method": "POST", "url": job_type.endpoint, "body": body}))
                submit_lines(consumer, job_type, lines, now)
