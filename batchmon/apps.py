from django.apps import AppConfig


class BatchmonConfig(AppConfig):
    name = "batchmon"
    verbose_name = "batchmon"
