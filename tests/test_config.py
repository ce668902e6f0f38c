"""fastconv.config: its docstring's table names every tunable the module reads."""

import inspect
import re

from fastconv import config


def test_every_environment_variable_is_in_the_table():
    source = inspect.getsource(config)
    code = source[source.index('"""', 3) + 3:]   # the module after its docstring
    read = set(re.findall(r'"(FASTCONV_[A-Z_]+)"', code))
    table = set(re.findall(r"\| *(FASTCONV_[A-Z_]+) *\|", config.__doc__))
    assert read and read == table
