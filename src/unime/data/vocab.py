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

# ---------------------------------------------------------------------------------------------------
# The world's phrasing. Instructions follow MMEB-eval's style; query texts of image queries start with
# the `<|image_1|>` placeholder exactly like MMEB-eval's rows.

POSITION_PHRASES = {"left": "on the left", "right": "on the right", "center": "in the center",
                    "top": "at the top", "bottom": "at the bottom"}
SHAPE_PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars",
                 "cross": "crosses", "diamond": "diamonds"}
OBJECT_WORD, OBJECTS_WORD = "object", "objects"

IMAGE_PLACEHOLDER = "<|image_1|>"
INSTRUCTIONS = {
    "shape_cls": "Represent the given image for classification: what shape is shown?",
    "colour_cls": "Represent the given image for classification: what colour is the shape?",
    "count_cls": "Represent the given image for classification: how many objects are shown?",
    "object_cls": "Represent the given image for classification: what object is shown?",
    "vqa": "Represent the given image with the following question: {question}",
    "i2t": "Find a caption describing the given image.",
    "t2i": "Find an image that matches the given caption: {caption}",
    "modify": "Given an image, find a similar image with the following modification: {modification}.",
    "grounding": "Select the portion of the image that follows the language expression: {expression}",
}
TARGET_IMAGE_PROMPT = "Represent the given image."
TARGET_CROP_PROMPT = "Represent the given cropped image of the object."

CAPTION_TEMPLATES = {
    "full": "A {background} background with {count} {objects_word}: {objects}.",
    "relation": "{a} is {relation} {b}.",
    "list": "{objects}.",
    "count": "{count} {objects_word} on a {background} background.",
}
QUESTION_TEMPLATES = {
    "colour": "What colour is {ref}?",
    "shape": "What shape is {ref}?",
    "size": "What size is {ref}?",
    "position": "Where is {ref}?",
    "count": "How many {plural} are there?",
    "relation_shape": "What shape is {relation} {ref}?",
    "relation_colour": "What colour is the object {relation} {ref}?",
}
MODIFICATION_TEMPLATES = {
    "colour": "make {ref} {value}",
    "size": "make {ref} {value}",
    "shape": "change {ref} into {a_value}",
    "remove": "remove {ref}",
}


def world_sentences() -> list[str]:
    """One filled example of every template above, for the tiny tokenizer's training corpus."""
    out = [IMAGE_PLACEHOLDER + "\n" + INSTRUCTIONS[k] for k in ("shape_cls", "colour_cls", "count_cls", "object_cls",
                                                             "i2t")]
    out += [TARGET_IMAGE_PROMPT, TARGET_CROP_PROMPT,
            INSTRUCTIONS["vqa"].format(question=QUESTION_TEMPLATES["colour"].format(ref="the star")),
            INSTRUCTIONS["t2i"].format(caption="A red circle."),
            INSTRUCTIONS["modify"].format(modification=MODIFICATION_TEMPLATES["colour"].format(ref="the circle",
                                                                                              value="blue")),
            INSTRUCTIONS["grounding"].format(expression="the small red circle on the left")]
    out.append(CAPTION_TEMPLATES["full"].format(background="white", count="two", objects_word=OBJECTS_WORD,
                                                objects="a small red circle on the left and an orange star "
                                                        "at the top"))
    out.append(CAPTION_TEMPLATES["full"].format(background="black", count="one", objects_word=OBJECT_WORD,
                                                objects="a large green object in the center"))
    out.append(CAPTION_TEMPLATES["relation"].format(a="A small purple diamond", relation="right of",
                                                    b="a large yellow cross"))
    out.append(CAPTION_TEMPLATES["count"].format(count="Three", objects_word=OBJECTS_WORD, background="gray"))
    for key, tmpl in QUESTION_TEMPLATES.items():
        out.append(tmpl.format(ref="the red object at the bottom", plural="triangles", relation="above"))
    for key, tmpl in MODIFICATION_TEMPLATES.items():
        out.append(tmpl.format(ref="the square", value="large", a_value="a diamond"))
    out += [" ".join(POSITION_PHRASES.values()), " ".join(SHAPE_PLURALS.values())]
    return out
