"""Chat templates of the three teacher families (and the student), as Jinja strings.

They follow the real templates closely enough that a harvest written against them works with
the real models: Gemma's ``<start_of_turn>`` turns (system text folded into the first user
turn), gpt-oss's harmony messages (``<|start|>role<|message|>…<|end|>``, answers on the
``final`` channel, ending in ``<|return|>``) and Qwen's ChatML (``<|im_start|>role\\n…<|im_end|>``).
"""

GEMMA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] | trim + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{{ (first_user_prefix if loop.first else '') ~ (message['content'] | trim) }}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

HARMONY = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|start|>assistant<|channel|>final<|message|>{{ message['content'] }}"
    "{% if loop.last %}<|return|>{% else %}<|end|>{% endif %}"
    "{% elif message['role'] == 'system' %}"
    "<|start|>developer<|message|># Instructions\n\n{{ message['content'] }}<|end|>"
    "{% else %}"
    "<|start|>{{ message['role'] }}<|message|>{{ message['content'] }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant<|channel|>final<|message|>{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# The default student speaks Llama 2's dialect, different from every teacher's.
STUDENT = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}"
    "{% else %}[INST] {{ message['content'] }} [/INST]"
    "{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"gemma": GEMMA, "harmony": HARMONY, "chatml": CHATML, "student": STUDENT}
