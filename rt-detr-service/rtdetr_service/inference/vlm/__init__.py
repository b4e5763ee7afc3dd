"""The vision-language model providers behind `core.vlm.VisionLanguageModel`: a local transformers
model (`local.py`) or an OpenAI-compatible endpoint behind a key pool; `loading.load_vlm` picks one
from VLM_PROVIDER."""
