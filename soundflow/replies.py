"""The assistant's replies to proactive sound classes: one table, used by data generation
(`proactive_reply`, in `tasks`, through curation too) and by curation's default (`default_reply`,
in `curate.curate_stream`).

The texts are training targets: change one and data built before and after disagree.
"""

from __future__ import annotations

PROACTIVE_REPLIES = {  # what was heard, then what to do about it
    "smoke_alarm": "The smoke alarm is going off. Check for smoke or fire, and leave the house if you see any.",
    "alarm_clock": "Your alarm clock is ringing. Time to get up, or turn it off.",
    "baby_cry": "The baby is crying. Please go and check on them.",
    "car_horn": "A car horn just honked nearby. Watch out for traffic.",
    "chainsaw": "A chainsaw is running close by. Keep your distance and protect your ears.",
    "cough_multiple": "You have been coughing a lot. Drink some water, and see a doctor if it goes on.",
    "door_knock": "Someone is knocking at the door. You may want to answer it.",
    "glass_break": "I heard glass breaking. Watch your step and check whether anyone is hurt.",
    "phone_ring": "Your phone is ringing. You may want to answer it.",
    "siren": "I hear a siren. An emergency vehicle may be coming, so keep the road clear.",
    "sneeze": "Someone sneezed. Bless you, and keep a tissue handy.",
    "thunder": "That was thunder. A storm is coming, so stay indoors and unplug sensitive devices.",
}
CATEGORY_REPLIES = {  # per macro category, for classes without a reply of their own (curation's default)
    "Traffic": "Watch out — there's traffic that may need your attention.",
    "Human Sound Signals": "Someone nearby may need your attention.",
    "Equipment": "An appliance or device seems to need your attention.",
    "Daily Living Sounds": "Something just happened nearby that may need your attention.",
    "Nature & Environment": "Something outside may need your attention.",
}


def proactive_reply(cls: str, caption: str, category: str = "") -> str:
    """The reply data generation gives a RESPOND event: the class's, else a generic one."""
    return PROACTIVE_REPLIES.get(cls) or f"I heard {caption or 'something'}. Do you need anything?"


def default_reply(cls: str, caption: str, category: str = "") -> str:
    """Curation's default reply for a RESPOND event: per class, else per macro category, else generic."""
    if cls in PROACTIVE_REPLIES:
        return PROACTIVE_REPLIES[cls]
    macro = category.split("/")[0] if category else ""
    if macro in CATEGORY_REPLIES:
        return CATEGORY_REPLIES[macro]
    return f"I heard {caption.strip() or 'something'} — do you need anything?"
