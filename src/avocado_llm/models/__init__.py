"""The local-model component: one way to run a causal LM in this process.

Below the teachers, evaluation and the serving engine, above the config and the data sources.
It imports neither of those users (nor ``distill``), so each can build on it.

- :mod:`~avocado_llm.models.loading`: load a Hugging Face directory or a GGUF file
  (``trust_remote_code=False`` always), on a device with its dtype (``load_model``,
  ``pick_device``);
- :mod:`~avocado_llm.models.chat`: render a conversation in the model's chat template (or the
  recipe's override), encode prompt + answer for training and scoring (``encode_chat``), and
  the model's stop tokens (``stop_token_ids``: the one end-of-turn / EOS rule);
- :mod:`~avocado_llm.models.generation`: batched generation with left padding, stopping at
  the stop tokens, with the top-k log-probabilities of every generated position
  (``generate_batch``);
- :mod:`~avocado_llm.models.scoring`: teacher-forced log-probabilities of known answers
  (``score_completions``), and of every token of a given sequence (``score_tokens``: an
  echoed prompt's log-probabilities);
- :mod:`~avocado_llm.models.files`: the files that decide a model's answers, and their hash
  (``weights_revision``).

The package itself imports nothing heavy: ``avocado`` builds its parser without torch.
"""
