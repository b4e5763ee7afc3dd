"""The vision-language model's providers: a hosted OpenAI-compatible endpoint behind a key pool, or a
local transformers model; both implement `core.vlm.VisionLanguageModel`."""
