"""AVA's file formats (cvrl_tf.data.ava): box CSVs, proposals, label maps, excluded timestamps."""
import pickle

import numpy as np
import pytest

from cvrl_tf.data import ava


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_keys_name_keyframes_as_the_evaluator_does():
    assert ava.keyframe_key("-5KQ66BBWC4", 902) == "-5KQ66BBWC4,0902"
    assert ava.keyframe_key("a,b", 95) == "a,b,0095"
    assert ava.split_key("a,b,0095") == ("a,b", 95)
    with pytest.raises(ValueError, match="is not '<video_id>,<seconds>'"):
        ava.split_key("no-seconds")


def test_annotation_rows_hold_boxes_as_ymin_xmin_ymax_xmax(tmp_path):
    path = _write(tmp_path, "gt.csv", "-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n"
                                      "\n"
                                      "-5KQ66BBWC4,0903,0.1,0.2,0.3,0.4,12\n")
    first, second = ava.read_annotations(path)
    assert first.box == (0.151, 0.077, 0.811, 0.283)  # y1, x1, y2, x2
    assert (first.action_id, first.person_id, first.score, first.line) == (80, 1, None, 1)
    assert first.key == "-5KQ66BBWC4,0902" and first.timestamp == 902
    assert second.box == (0.2, 0.1, 0.4, 0.3) and second.person_id is None and second.line == 3
    assert ava.csv_from_box(first.box) == (0.077, 0.151, 0.283, 0.811)


@pytest.mark.parametrize("row,cause", [
    ("v,0902,0.1,0.2,0.3", "expected 8 columns"),
    ("v,0902,0.1,0.2,0.3,zero,1,1", "y2 'zero' is not a number"),
    ("v,0902,0.1,0.2,0.3,nan,1,1", "y2 'nan' is not finite"),
    ("v,902.5,0.1,0.2,0.3,0.4,1,1", "timestamp '902.5' is not a whole number"),
    ("v,0902,0.1,0.2,0.3,0.4,0,1", "action id '0' is not a whole number >= 1"),
    ("v,0902,0.1,0.2,0.3,0.4,3,x", "person id 'x' is not a number"),
    (",0902,0.1,0.2,0.3,0.4,3,1", "the video id is empty"),
    ("v,0902,0.1,0.2,1.3,0.4,3,1", "box corner outside [0, 1]"),
    ("v,0902,0.5,0.2,0.3,0.4,3,1", "box with x1 >= x2"),
    ("v,0902,0.1,0.4,0.3,0.4,3,1", "box with y1 >= y2"),
])
def test_a_bad_annotation_row_is_refused_naming_file_line_and_cause(tmp_path, row, cause):
    path = _write(tmp_path, "gt.csv", "v,0902,0.1,0.2,0.3,0.4,3,1\n" + row + "\n")
    with pytest.raises(ValueError) as error:
        ava.read_annotations(path)
    assert str(error.value).startswith(f"AVA file {path}, line 2: ")
    assert cause in str(error.value)


def test_box_checks_can_be_left_to_the_caller(tmp_path):
    path = _write(tmp_path, "gt.csv", "v,0902,0.5,0.2,0.3,0.4,3,1\n")
    (row,) = ava.read_annotations(path, check_boxes=False)
    assert ava.box_problem(row.box) == "box with x1 >= x2 (0.5 >= 0.3)"
    assert ava.box_problem((0.0, 0.0, 1.0, 1.0)) is None


def test_detections_take_a_score_or_default_to_one(tmp_path):
    path = _write(tmp_path, "det.csv", "v,0902,0.1,0.2,0.3,0.4,5,0.75\n"
                                       "v,0903,0.3,0.2,0.1,0.4,6\n")  # Unchecked box values.
    scored, plain = ava.read_detections(path)
    assert (scored.action_id, scored.score, scored.person_id) == (5, 0.75, None)
    assert (plain.action_id, plain.score, plain.box) == (6, 1.0, (0.2, 0.3, 0.4, 0.1))
    with pytest.raises(ValueError, match="line 1: score 'high' is not a number"):
        ava.read_detections(_write(tmp_path, "bad.csv", "v,0902,0.1,0.2,0.3,0.4,5,high\n"))


def test_proposals_in_slowfast_csv_and_mmaction2_pickle(tmp_path):
    path = _write(tmp_path, "p.csv", "v,0902,0.1,0.2,0.3,0.4,,0.99\n"
                                     "v,0902,0.2,0.2,0.3,0.4,7,0.5\n"  # An action is ignored.
                                     "w,0905,0.1,0.2,0.3,0.4,0.25\n")
    rows = ava.read_proposals(path)
    assert [(r.key, r.box, r.action_id, r.score) for r in rows] == [
        ("v,0902", (0.2, 0.1, 0.4, 0.3), None, 0.99), ("v,0902", (0.2, 0.2, 0.4, 0.3), None, 0.5),
        ("w,0905", (0.2, 0.1, 0.4, 0.3), None, 0.25)]
    pkl = tmp_path / "p.pkl"
    pkl.write_bytes(pickle.dumps({"v,0902": np.array([[0.1, 0.2, 0.3, 0.4, 0.9]]),
                                  "w,0905": np.array([[0.5, 0.6, 0.7, 0.8]], np.float32)}))
    rows = ava.read_proposals(str(pkl))
    assert [(r.key, r.box, r.score) for r in rows] == [
        ("v,0902", (0.2, 0.1, 0.4, 0.3), 0.9),
        ("w,0905", tuple(np.float32([0.6, 0.5, 0.8, 0.7]).tolist()), 1.0)]


class _Trap:
    def __reduce__(self):
        return (exec, ("raise SystemExit('code from the pickle ran')",))


def test_a_proposal_pickle_cannot_run_code(tmp_path):
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"v,0902": _Trap()}))
    with pytest.raises(ValueError, match="holds a builtins.exec object, which is not loaded"):
        ava.read_proposals(str(pkl))
    pkl.write_bytes(pickle.dumps({"v0902": np.zeros([1, 5])}))
    with pytest.raises(ValueError, match="is not '<video_id>,<seconds>'"):
        ava.read_proposals(str(pkl))


def test_label_maps_of_both_styles(tmp_path):
    evaluated = _write(tmp_path, "a.pbtxt", 'item {\n  name: "bend/bow (at the waist)"\n  id: 1\n'
                                            '}\nitem {\n  name: "crouch/kneel"\n  id: 3\n}\n')
    assert ava.read_label_map(evaluated) == {1: "bend/bow (at the waist)", 3: "crouch/kneel"}
    full = _write(tmp_path, "b.pbtxt",
                  'label {\n  name: "talk to (e.g., self, a person, a group)"\n  label_id: 79\n'
                  '  label_type: PERSON_INTERACTION\n}\n# a comment\n'
                  'label { name: "say \\"hi\\"" label_id: 2 label_type: PERSON_MOVEMENT }\n')
    assert ava.read_label_map(full) == {2: 'say "hi"',
                                        79: "talk to (e.g., self, a person, a group)"}
    for style in (None, "PERSON_MOVEMENT"):
        ava.write_label_map(str(tmp_path / "c.pbtxt"), {4: 'a "b"', 1: "c/d"}, style)
        assert ava.read_label_map(str(tmp_path / "c.pbtxt")) == {1: "c/d", 4: 'a "b"'}


@pytest.mark.parametrize("text,cause", [
    ('item {\n  name: "a"\n}\n', "line 1: a block needs a quoted name and an integer id"),
    ('item {\n  name: "a"\n  id: 1\n}\nitem {\n  name: "b"\n  id: 1\n}\n',
     "line 5: id 1 is repeated"),
    ('item {\n  name: "a"\n  id: 0\n}\n', "id 0 is < 1"),
    ('item {\n  name: "a"\n  id: 1\n', "this block has no closing '}'"),
    ('items: 3\n', "expected 'item {' or 'label {'"),
])
def test_a_bad_label_map_is_refused_naming_the_line(tmp_path, text, cause):
    with pytest.raises(ValueError, match=cause.replace("(", r"\(").replace("{", r"\{")):
        ava.read_label_map(_write(tmp_path, "lm.pbtxt", text))
    with pytest.raises(ValueError, match="has no classes"):
        ava.read_label_map(_write(tmp_path, "empty.pbtxt", "# nothing\n"))


def test_excluded_timestamps(tmp_path):
    path = _write(tmp_path, "ex.csv", "v,0902\nw,1798\n")
    assert ava.read_excluded(path) == {"v,0902", "w,1798"}
    ava.write_excluded(str(tmp_path / "out.csv"), [("v", 902), ("w", 1798)])
    assert (tmp_path / "out.csv").read_text() == "v,0902\nw,1798\n"
    with pytest.raises(ValueError, match="line 2: expected 2 columns"):
        ava.read_excluded(_write(tmp_path, "bad.csv", "v,0902\nv,0903,1\n"))
    with pytest.raises(ValueError, match="does not exist"):
        ava.read_excluded(str(tmp_path / "missing.csv"))


def test_writers_round_trip(tmp_path):
    rows = [ava.BoxRow("v", 902, (0.25, 0.125, 0.5, 0.75), action_id=3, person_id=7,
                       score=0.123456789)]
    for kind in ("annotations", "detections", "proposals"):
        path = str(tmp_path / f"{kind}.csv")
        ava.write_box_csv(path, rows, kind)
        (back,) = getattr(ava, f"read_{kind}")(path)
        assert back.box == (0.25, 0.125, 0.5, 0.75) and back.key == "v,0902"
        if kind == "annotations":
            assert open(path).read() == "v,0902,0.125,0.250,0.750,0.500,3,7\n"
            assert (back.action_id, back.person_id) == (3, 7)
        else:
            assert back.score == 0.123457 and back.action_id == (3 if kind == "detections"
                                                                 else None)
    ava.write_box_csv(str(tmp_path / "exact.csv"), [rows[0]._replace(box=(1 / 3, 0.1, 0.7, 0.9))],
                      "detections", decimals=None)
    (back,) = ava.read_detections(str(tmp_path / "exact.csv"))
    assert back.box == (1 / 3, 0.1, 0.7, 0.9) and back.score == 0.123456789


def test_rows_of_one_person_merge_into_one_box_with_its_actions():
    box_a, box_b = (0.1, 0.1, 0.5, 0.5), (0.2, 0.3, 0.6, 0.9)
    rows = [ava.BoxRow("v", 902, box_a, 12, 0), ava.BoxRow("v", 902, box_b, 80, 1),
            ava.BoxRow("v", 902, box_a, 79, 0), ava.BoxRow("v", 902, box_a, 12, 0),
            ava.BoxRow("v", 903, box_a, 5, 0), ava.BoxRow("v", 902, box_b, 17, 1)]
    merged = ava.merge_person_boxes(rows)
    assert list(merged) == ["v,0902", "v,0903"]
    assert merged["v,0902"] == [ava.PersonBox(box_a, (12, 79), 0),
                                ava.PersonBox(box_b, (80, 17), 1)]
    assert merged["v,0903"] == [ava.PersonBox(box_a, (5,), 0)]
    proposals = ava.merge_person_boxes([ava.BoxRow("v", 902, box_a, score=0.9)])
    assert proposals["v,0902"] == [ava.PersonBox(box_a, (), None)]
