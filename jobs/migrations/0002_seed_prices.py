"""List prices (USD per 1M tokens) of the supported models, with the Batch API's 50% discount."""

from datetime import datetime, timezone
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2025, 8, 7, tzinfo=timezone.utc)

# model: (input, cached input, output)
LIST_PRICES = {
    "gpt-4o": ("2.50", "1.25", "10.00"),
    "gpt-4o-mini": ("0.15", "0.075", "0.60"),
    "gpt-4.1": ("2.00", "0.50", "8.00"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
    "gpt-5": ("1.25", "0.125", "10.00"),
    "gpt-5-mini": ("0.25", "0.025", "2.00"),
    "text-embedding-3-small": ("0.02", "0.02", "0"),
    "text-embedding-3-large": ("0.13", "0.13", "0"),
}


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("jobs", "ModelPrice")
    for model, (inp, cached, out) in LIST_PRICES.items():
        ModelPrice.objects.get_or_create(
            model=model,
            effective_from=EFFECTIVE_FROM,
            defaults={
                "input_per_1m": Decimal(inp),
                "cached_input_per_1m": Decimal(cached),
                "output_per_1m": Decimal(out),
                "batch_discount": Decimal("0.5"),
            },
        )


def unseed(apps, schema_editor):
    apps.get_model("jobs", "ModelPrice").objects.filter(effective_from=EFFECTIVE_FROM, model__in=LIST_PRICES).delete()


class Migration(migrations.Migration):
    dependencies = [("jobs", "0001_initial")]
    operations = [migrations.RunPython(seed, unseed)]
