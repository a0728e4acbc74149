"""The table of request bounds: every limit a request must stay within, with the reason for its value.

A bound is a constant (the code uses it by name) and a row in ``BOUNDS`` (name, value, why), the way
``warren/validation.py`` keeps its ``RULES``. ``docs/api-compat.md`` lists the same rows, and a test
checks that every value here appears there, so the documented limits cannot drift from the enforced
ones. A request over a bound is a 400 in its dialect's shape that names the bound.

Grammar figures were measured against llama.cpp 0.3.36 (llama-cpp-python's vendored copy) on the
default model (49,152-token vocabulary), with an 8 MiB main-thread stack like a worker's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Bound:
    name: str
    value: int | float
    why: str


# -- GBNF grammars (warren/grammar/gbnf.py, checks.py) -------------------------------------------------
GRAMMAR_MAX_CHARS = 262_144
GRAMMAR_MAX_NESTING = 2_000
GRAMMAR_MAX_LEFT_DEPTH = 2_500
GRAMMAR_MAX_ELEMENTS = 500_000
GRAMMAR_MAX_REPEAT = 2_000
GRAMMAR_MAX_WIDTH = 1_024
GRAMMAR_MAX_LEFT_PATHS = 50_000
GRAMMAR_STEP_SECONDS = 5.0

# -- JSON schemas (warren/grammar/schema.py) ------------------------------------------------------------
SCHEMA_MAX_DEPTH = 64
SCHEMA_MAX_VALUES = 20_000
SCHEMA_MAX_TEXT = 262_144
SCHEMA_MAX_ENUM = 512
SCHEMA_MAX_LITERAL = 4_096
SCHEMA_MAX_ENUM_TEXT = 65_536
SCHEMA_MAX_LENGTH = 10_000
SCHEMA_MAX_OPTIONAL = 1_000
SCHEMA_MAX_PROPERTIES = 256
SCHEMA_MAX_ALTERNATIVES = 512
SCHEMA_MAX_PATTERN = 1_024
SCHEMA_MAX_PATTERN_REPEAT = 1_000

# -- what every generation request carries (warren/params.py GenerationParams.check) -------------------
STOP_MAX_COUNT = 256
STOP_MAX_CHARS = 16_384
TOKEN_ID_LIMIT = 2**31

# -- embeddings (warren/embeddings.py, warren/worker/embedding.py) ---------------------------------------
EMBED_MAX_INPUTS = 2_048
EMBED_MAX_TOKENS = 300_000

BOUNDS: tuple[Bound, ...] = (
    Bound("stop strings: count", STOP_MAX_COUNT, "KoboldCpp's own cap on stop_sequence"),
    Bound("stop strings: characters in all", STOP_MAX_CHARS,
          "the stop matcher's automaton is built per request in time linear in them (~25 ms at the limit); "
          "matching then costs ~2 us a token whatever their size (256 strings of 8,000 characters had made "
          "generation 3x slower)"),
    Bound("logit_bias: token id", TOKEN_ID_LIMIT,
          "token ids are int32 in llama.cpp; a larger key could not even be encoded for the worker"),
    Bound("embeddings: inputs in one request", EMBED_MAX_INPUTS,
          "OpenAI's own limit for /v1/embeddings, so a client that batches for OpenAI fits; every input is "
          "one sequence of the worker's embeddings context"),
    Bound("embeddings: tokens in one request, all inputs together", EMBED_MAX_TOKENS,
          "OpenAI's own limit; the request is one worker round trip that holds the model's turn (generations "
          "on that model wait behind it) for as long as reading that many tokens takes"),
    Bound("grammar: characters", GRAMMAR_MAX_CHARS,
          "llama.cpp's json.gbnf is 0.6 KB and grammars made from large JSON schemas tens of KB; the whole "
          "text is parsed in Python before every request that carries it"),
    Bound("grammar: group nesting", GRAMMAR_MAX_NESTING,
          "llama.cpp parses groups by recursion (~450 B of stack a level): 16,000 levels parse, 20,000 "
          "overflow the worker's 8 MiB stack (SIGSEGV); the limit leaves an 8x margin"),
    Bound("grammar: chain of leftmost rule references", GRAMMAR_MAX_LEFT_DEPTH,
          "llama.cpp's left-recursion check recurses along the chain (100,000 overflow the stack), and its "
          "first stacks take time quadratic in it (r ::= s \"x\" …): 5,000 took 0.4 s, 20,000 6 s, "
          "2,500 0.06 s; the limit also admits the deepest allowed nesting"),
    Bound("grammar: elements after expanding repetitions", GRAMMAR_MAX_ELEMENTS,
          "a repetition copies what it repeats (\"<60 KB literal>\"{2000} would be 10^8 elements, GBs of "
          "memory); 500,000 elements are 4 MB in llama.cpp"),
    Bound("grammar: {m,n} repetition count", GRAMMAR_MAX_REPEAT,
          "llama.cpp refuses a minimum above 2,000 and silently makes a larger maximum unbounded; warren "
          "refuses both, and also n < m, which makes llama.cpp allocate rules without end"),
    Bound("grammar: ways a rule can begin", GRAMMAR_MAX_WIDTH,
          "each token is checked against the whole vocabulary once per way (~0.2-0.4 ms each here): "
          "20,000 alternatives took 33 s for 2 tokens; at the limit a token costs ~0.2-0.4 s"),
    Bound("grammar: left-reference paths from one rule", GRAMMAR_MAX_LEFT_PATHS,
          "llama.cpp walks every leftmost path without memory: 2^22 paths took 9 s before the first token"),
    Bound("grammar: seconds of grammar work for one token", GRAMMAR_STEP_SECONDS,
          "the runtime guard for ambiguity no static check bounds: a step this slow ends the request "
          "with a 400 before its stacks can grow further"),
    Bound("JSON schema: nesting depth", SCHEMA_MAX_DEPTH,
          "the schema converter recurses through the schema in Python"),
    Bound("JSON schema: values in the document", SCHEMA_MAX_VALUES,
          "bounds the walk and the converter's work"),
    Bound("JSON schema: characters of strings and keys", SCHEMA_MAX_TEXT,
          "the schema becomes a grammar of similar size"),
    Bound("JSON schema: enum values", SCHEMA_MAX_ENUM,
          "every value is one way to begin (see grammar width): 20,000 values took 80 s"),
    Bound("JSON schema: characters of one enum or const value", SCHEMA_MAX_LITERAL,
          "each value becomes a grammar literal"),
    Bound("JSON schema: characters of one enum", SCHEMA_MAX_ENUM_TEXT, "the enum becomes one grammar rule"),
    Bound("JSON schema: minLength, maxLength, minItems, maxItems", SCHEMA_MAX_LENGTH,
          "the converter writes the minimum out as that many copies"),
    Bound("JSON schema: maxLength - minLength, maxItems - minItems", SCHEMA_MAX_OPTIONAL,
          "the converter nests one group per optional item: maxLength 10,000,000 was a SIGSEGV; the "
          "result must stay under the grammar nesting limit"),
    Bound("JSON schema: properties of one object", SCHEMA_MAX_PROPERTIES,
          "the converter's work for optional properties grows with their square"),
    Bound("JSON schema: anyOf/oneOf/allOf/prefixItems entries", SCHEMA_MAX_ALTERNATIVES,
          "alternatives are ways to begin, like enum values"),
    Bound("JSON schema: pattern characters", SCHEMA_MAX_PATTERN, "a pattern becomes grammar rules"),
    Bound("JSON schema: {m,n} in a pattern", SCHEMA_MAX_PATTERN_REPEAT,
          "written out or nested by the converter, like maxLength"),
)
