"""Chapter 04's graded tasks: every planted wrong answer is rejected with its mistake
named (tests/helpers.py); the solution notebook, run under nbval, shows the real answers pass."""
from helpers import chapter_planted_tests

test_every_planted_wrong_answer_is_rejected_with_its_mistake_named = chapter_planted_tests("04")
