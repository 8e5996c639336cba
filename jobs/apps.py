from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    verbose_name = "Batch jobs"

    def ready(self):
        from django.db.models.signals import post_migrate

        from jobs.schedules import sync_schedules_after_migrate

        post_migrate.connect(sync_schedules_after_migrate, sender=self)
