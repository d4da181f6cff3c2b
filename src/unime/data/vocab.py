"""The closed vocabulary of the generated demo world (`unime data synth`).

Kept in one place so the world generator, the tiny tokenizer's training corpus and the teacher
T-CoT writer all agree on the same words.
"""

SHAPES = ("circle", "square", "triangle", "star", "cross", "diamond")
COLOURS = {  # name -> RGB
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
SIZES = ("small", "large")
POSITIONS = ("left", "center", "right", "top", "bottom")
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = ("zero", "one", "two", "three")
BACKGROUNDS = {"white": (250, 250, 250), "gray": (200, 200, 200), "black": (20, 20, 20)}
