"""The building blocks ``pretextflow.api`` re-exports for plugins: batched seeded augmentation,
heads, momentum encoders, schedules and collectives over the global batch. Imports nothing of
pretextflow but errors, so a plugin that uses it depends on no stage."""
