"""``prompt.subjects`` in the config and ``--subject`` / ``--auto-person --person-count`` on the CLI."""

from __future__ import annotations

import pytest

from mattepod import cli, config
from mattepod.errors import ConfigError
from mattepod.subjects import plans_from_config


def overrides(*argv: str) -> dict:
    return cli.overrides_from_args(cli.build_parser().parse_args(["run", *argv]))


def test_subject_flags_become_subjects_with_keyframes():
    o = overrides("--subject", "alice:points=640,360;700,400,0", "--subject", "bob@3:mask=b:c.png",
                  "--subject", "carol:box=1,2,30,40:points=10,20:color=#ff0000", "--subject", "alice@40:box=5,6,7,8")
    cfg = config.validate(config.set_dotted(d := {}, "prompt.subjects", o["prompt.subjects"]) or d)
    a, b, c = cfg.prompt.subjects
    assert (a.name, [(p.x, p.y, p.label) for p in a.points]) == ("alice", [(640, 360, 1), (700, 400, 0)])
    assert a.frame is None and [(k.frame, k.box) for k in a.keyframes] == [(40, (5, 6, 7, 8))]
    assert (b.name, b.frame, b.mask) == ("bob", 3, "b:c.png")
    assert c.box == (1, 2, 30, 40) and c.color == "#FF0000" and len(c.points) == 1
    plans = plans_from_config(cfg.prompt)
    assert [p.name for p in plans] == ["alice", "bob", "carol"]
    assert [p.prompt.frame for p in plans] == [0, 3, 0] and list(plans[0].keyframes) == [40]
    assert plans[0].color != plans[1].color and plans[2].color == "#FF0000"


def test_person_count_makes_person1_to_n_largest_first():
    o = overrides("--auto-person", "--person-count", "3")
    assert "prompt.auto_person" not in o
    cfg = config.validate({"prompt": {"subjects": o["prompt.subjects"]}})
    plans = plans_from_config(cfg.prompt)
    assert [(p.name, p.prompt.auto_person, p.prompt.person_select, p.prompt.person_count) for p in plans] == \
        [("person1", True, "rank", 1), ("person2", True, "rank", 2), ("person3", True, "rank", 3)]


def test_rank_picks_one_person_by_size():
    from mattepod.detect import Detection, select_people

    dets = [Detection((0, 0, 10, 10), 0.9), Detection((0, 0, 30, 30), 0.9), Detection((0, 0, 20, 20), 0.9)]
    assert [d.area for d in select_people(dets, "rank", 1)] == [900]
    assert [d.area for d in select_people(dets, "rank", 3)] == [100]
    assert select_people(dets, "rank", 4) == []


@pytest.mark.parametrize("argv, msg", [
    (["--subject", "alice"], "no prompt"),
    (["--subject", "a b:mask=x.png"], "letters"),
    (["--subject", "a:size=3"], "unknown .size."),
    (["--subject", "a:points"], "not KIND=VALUE"),
    (["--subject", "a:mask=x.png", "--subject", "a:mask=y.png"], "needs @FRAME"),
    (["--subject", "a:points=1,2", "--mask", "m.png"], "replace --mask"),
    (["--person-count", "2"], "needs --auto-person"),
    (["--subject", "a@-1:mask=x.png"], "negative"),
])
def test_bad_subject_flags_say_what_to_fix(argv, msg):
    with pytest.raises(ConfigError, match=msg):
        overrides(*argv)


@pytest.mark.parametrize("prompt, msg", [
    ({"subjects": [{"name": "a", "mask": "x.png"}], "mask": "y.png"}, "either as prompt.subjects"),
    ({"subjects": [{"name": "a", "mask": "x.png"}, {"name": "a", "mask": "y.png"}]}, "repeat"),
    ({"subjects": [{"name": "a"}]}, "has no prompt"),
    ({"subjects": [{"name": "a", "mask": "x.png", "points": [{"x": 1, "y": 2}]}]}, "either a mask"),
    ({"subjects": [{"name": "a", "mask": "x.png", "keyframes": [{"frame": 0, "mask": "k.png"}]}]}, "repeats a frame"),
    ({"subjects": [{"name": "../a", "mask": "x.png"}]}, "letters"),
])
def test_bad_subjects_in_the_config(prompt, msg):
    with pytest.raises(ConfigError, match=msg):
        config.validate({"prompt": prompt})


def test_the_single_prompt_stays_valid():
    cfg = config.validate({"prompt": {"mask": "m.png"}})
    assert cfg.prompt.subjects == [] and cfg.prompt.exclusive is True
