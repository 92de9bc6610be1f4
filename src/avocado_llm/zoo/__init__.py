"""Building the tiny world's teacher zoo: a recipe at the top of the house.

It trains teachers (:mod:`avocado_llm.zoo.sft`: distillation's one loop, in the zoo's settings)
and scores them with :mod:`avocado_llm.evaluate`, so it sits above every stage; the stages need
only the world's corpus and a directory's parameter count, which live in
:mod:`avocado_llm.world.corpus`.
"""

from avocado_llm.zoo.build import (
    ZOO,
    ZOO_FILE,
    TeacherSpec,
    build_teacher,
    describe_teacher,
    evaluate_teacher,
)

__all__ = [
    "ZOO",
    "ZOO_FILE",
    "TeacherSpec",
    "build_teacher",
    "describe_teacher",
    "evaluate_teacher",
]
