"""DynFocus' event task (the full learning run is bench/dynfocus_events.py): 8-scene videos where one or two scenes
show four corner squares and the question names the corner that holds the answer, T-DPC recovers the scenes, Dynamic
Selection learns to keep the relevant scenes, and the optional initial stage keeps every event before it chooses."""

import numpy as np
import torch

from videoadapt.layers.dpc_knn import dpc_knn
from videoadapt.recipes.dynfocus_events import COLORS, CORNERS, EventSettings, make_event_videos, run_events


def test_event_videos_hold_the_answer_in_one_or_two_scenes():
    settings = EventSettings()
    videos, labels, relevant, asked = make_event_videos(24, settings, seed=3)
    assert videos.shape == (24, settings.frames, 32, 32, 3) and videos.dtype == np.uint8
    assert set(labels) <= set(range(len(COLORS) + 1)) and set(asked) <= set(range(len(CORNERS)))
    assert (relevant[labels == len(COLORS)].sum(1) == 0).all()  # "no": no square anywhere
    counts = relevant[labels < len(COLORS)].sum(1)
    assert counts.min() >= 1 and counts.max() <= 2
    colors = np.array(list(COLORS.values()), dtype=np.uint8)
    scenes = videos.reshape(24, settings.events, settings.frames_per_event, 32, 32, 3)
    for i in range(24):
        for e in range(settings.events):
            for k, (y, x) in enumerate(CORNERS.values()):
                cell = scenes[i, e, :, y * 8 : (y + 1) * 8, x * 8 : (x + 1) * 8]  # [frames, 8, 8, 3]
                matches = [c for c, color in enumerate(colors) if (cell == color).all()]  # a full square, every frame
                if not relevant[i, e]:
                    assert matches == [], (i, e, k)
                else:
                    assert len(matches) == 1, (i, e, k)
                    if k == asked[i]:
                        assert matches[0] == labels[i], (i, e)  # the named corner holds the answer
    # the other corners vary: the colours present alone do not give the answer
    some = [i for i in range(24) if labels[i] < len(COLORS)]
    assert len({tuple(scenes[i, relevant[i].argmax(), 0, 0, 31]) for i in some}) > 1
    again = make_event_videos(24, settings, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (videos, labels, relevant, asked)))


def test_scenes_are_the_t_dpc_clusters_of_the_frames():
    settings = EventSettings()
    videos, _, _, _ = make_event_videos(8, settings, seed=5)
    pooled = torch.from_numpy(videos).float().reshape(8, settings.frames, 4, 8, 4, 8, 3).mean((3, 5)).flatten(2)
    result = dpc_knn(pooled, settings.events, settings.frames_per_event - 1, center_order="position")
    scene = torch.arange(settings.frames) // settings.frames_per_event
    assert torch.equal(result.assign, scene.expand(8, -1))


def test_initial_stage_keeps_every_event_then_selects(monkeypatch):
    import videoadapt.recipes.dynfocus_events as events_module

    stages = []
    real = events_module.train_label_task

    def recording(model, logits_fn, videos, labels, steps, settings, name, extra=None):
        stages.append((name, steps, model.config.num_key_frames(videos.shape[1]), model.config.num_events))
        return real(model, logits_fn, videos, labels, steps, settings, name, extra)

    monkeypatch.setattr(events_module, "train_label_task", recording)
    settings = EventSettings(events=4, keep_ratio=0.5, train_videos=4, test_videos=4, batch_size=2, initial_steps=2,
                             steps=1, topk_num_samples=4)  # fmt: skip
    result = events_module.run_events(settings, all_frames=True)
    # the selected model: first K = L = 4 (every event's key frame), then K = 2; the all-frames model (L = K = T = 8)
    # trains as many steps in all
    assert [(steps, k, events) for _, steps, k, events in stages] == [(2, 4, 4), (1, 2, 4), (3, 8, 8)]
    assert result["key_frames"] == 2 and result["initial_steps"] == 2 and result["steps"] == 1


def test_dynamic_selection_learns_to_keep_the_relevant_events():
    settings = EventSettings(steps=400, seed=0)  # the bench's task and data (512 / 128 videos), a third of its steps
    result = run_events(settings, all_frames=False)
    # chance: event recall 0.14 for a random K = 2 of L = 8, accuracy 0.2. Seeds 0-2 gave recall 0.99 / 0.99 / 1.0
    # (>= 0.92 from step 200 on), accuracy 0.48 / 0.44 / 0.56 and "no" 0.96-0.97; the bars leave room for float
    # differences between CPUs
    assert (result["key_frames"], result["events"], result["tokens_selected"]) == (2, 8, 108)
    assert result["event_recall"] >= 0.9, result
    assert set(result["event_recall_by_answer"]) == set(COLORS)  # "no" videos have no relevant scene
    assert min(result["event_recall_by_answer"].values()) >= 0.8, result  # every colour, not just most of them
    assert result["acc_selected"] >= 0.35, result
    assert result["acc_selected_by_answer"]["no"] >= 0.8, result
