"""The alignment fits: relative (tweakwcs), joint visit fit, judging each image, stacked correctors."""
