"""MimoTask as a timm TrainingTask: the contract checks of timm's tests/test_task.py, the documented loop, real data."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.data import create_dataset
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationTask, TrainingTask, load_task_ema_checkpoint, resume_task_checkpoint
from timm.utils import CheckpointSaver
from torch.utils.data import DataLoader

import timm_mimo  # noqa: F401
from timm_mimo.data import PixelMix, eval_transform
from timm_mimo.loss import MimoLoss
from timm_mimo.metrics import collect_member_logits, topk_accuracy
from timm_mimo.mixing import Mixer
from timm_mimo.task import MimoTask


def tiny_mimo(**kwargs):
    return timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=3, in_chans=1,
                             **kwargs)


def batch(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 3, (size,), generator=generator)


def test_mimo_task_is_a_training_task_and_returns_timms_dict():
    task = MimoTask.from_model(tiny_mimo(), seed=0, verbose=False)
    assert isinstance(task, TrainingTask) and task.mimo and task.num_members == 2
    images, targets = batch()
    task.set_step(0, 0, 10, 2)
    result = task(images, targets)
    assert result['loss'].ndim == 0 and result['output'].shape == (8, 2, 3)
    assert result['kappas'].shape == (8, 2) and torch.allclose(result['kappas'].sum(1), torch.ones(8))
    assert result['binary'].dtype == torch.bool
    result['loss'].backward()
    assert all(p.grad is not None for p in task.get_trainable_module().parameters() if p.requires_grad)


def test_mimo_task_loss_is_the_member_loss_of_its_own_plan():
    model = tiny_mimo()
    task = MimoTask.from_model(model, seed=3, verbose=False)
    images, targets = batch()
    task.set_step(1, 2, 10, 4, shard=1)
    result = task(images, targets)
    # the same shard recomputed by hand: pairs and plan from the same seeded generator
    task.set_step(1, 2, 10, 4, shard=1)
    xs, ys, plan = task.mix_inputs(images, targets)
    expected = MimoLoss(**model.loss_cfg)(model(xs, plan), ys, plan.kappas)
    assert torch.equal(result['loss'], expected)
    task.set_step(1, 2, 10, 4, shard=2)
    assert not torch.equal(task.mix_inputs(images, targets)[0], xs)  # another shard, other pairs


def test_from_model_keeps_the_model_recipe_and_applies_overrides():
    model = tiny_mimo()
    task = MimoTask.from_model(model, verbose=False)
    assert task.mixer.kind == model.mix_cfg['kind'] and task.criterion.root == model.loss_cfg['root']
    task = MimoTask.from_model(model, mix='linear', mix_alpha='none', loss_root=1.0, smoothing=0.1, input_repeat=0.5,
                               mimo_cutmix=1.0, verbose=False)
    assert task.mixer.kind == 'linear' and task.mixer.alpha is None and task.criterion.root == 1.0
    assert task.criterion.label_smoothing == 0.1 and task.input_repeat == 0.5
    assert isinstance(task.pixel_mix, PixelMix) and task.pixel_mix.cutmix_alpha == 1.0
    assert task.mixer.generator is task.generator


def test_plain_model_is_timms_classification_step():
    model = timm.create_model('test_resnet', num_classes=3, in_chans=1)
    task = MimoTask.from_model(model, smoothing=0.0, verbose=False)
    reference = ClassificationTask(model, nn.CrossEntropyLoss(), verbose=False)
    images, targets = batch()
    model.eval()  # no BatchNorm statistics update between the two calls
    assert torch.equal(task(images, targets)['loss'], reference(images, targets)['loss'])
    with pytest.raises(ValueError, match='not a MIMO model'):
        MimoTask.from_model(model, mimo_cutmix=1.0, verbose=False)
    with pytest.raises(ValueError, match='MIMO models only'):
        MimoTask(model, mixer=Mixer(2), verbose=False)


def test_bad_task_arguments_are_refused():
    with pytest.raises(ValueError, match='input_repeat'):
        MimoTask(tiny_mimo(), input_repeat=1.5, verbose=False)
    with pytest.raises(ValueError, match='3 members'):
        MimoTask(tiny_mimo(), mixer=Mixer(3), verbose=False)


def test_task_to_keeps_device_dtype_in_sync():
    task = MimoTask.from_model(tiny_mimo(), verbose=False).to(dtype=torch.float64)
    assert task.dtype == next(task.parameters()).dtype == torch.float64
    task.float()
    assert task.dtype == torch.float32


def test_train_eval_modes_reach_the_model():
    task = MimoTask.from_model(tiny_mimo(), verbose=False)
    for mode in (True, False, True):
        assert (task.train() if mode else task.eval()) is task
        assert all(module.training is mode for module in task.get_trainable_module().modules())


def test_checkpoint_saver_ema_and_resume_follow_timms_task_helpers(tmp_path):
    task = MimoTask.from_model(tiny_mimo(), verbose=False)
    optimizer = torch.optim.SGD(task.get_trainable_module().parameters(), lr=0.1)
    task.setup_ema(decay=0.0)
    images, targets = batch()
    task.set_step(0, 0, 1, 1)
    task(images, targets)['loss'].backward()
    optimizer.step()
    task.update_ema(step=1)
    path = tmp_path / 'task.pth.tar'
    CheckpointSaver(task.get_trainable_module(), optimizer, checkpoint_dir=tmp_path, task=task)._save(path, epoch=2)
    checkpoint = torch.load(path, weights_only=False)
    assert 'state_dict' in checkpoint and 'state_dict_ema' in checkpoint and 'task_state' not in checkpoint
    fresh = MimoTask.from_model(tiny_mimo(), verbose=False)
    fresh.setup_ema(decay=0.0)
    assert resume_task_checkpoint(fresh, path, log_info=False, weights_only=False) == 3
    load_task_ema_checkpoint(fresh, path, weights_only=False)
    for key, value in task.get_trainable_module().state_dict().items():
        assert torch.equal(fresh.get_trainable_module().state_dict()[key], value), key
    ema = fresh.get_trainable_module(ema=True).module.state_dict()
    for key, value in task.get_trainable_module().state_dict().items():
        assert torch.equal(ema[key], value), key  # decay 0: the EMA is the weights


def test_compiled_task_matches_eager():
    task = MimoTask.from_model(tiny_mimo(), seed=1, verbose=False).eval()
    images, targets = batch()
    task.set_step(0, 3, 10, 2)
    expected = task(images, targets)['loss']
    task.compile(backend='eager')
    assert hasattr(task.get_eval_model(), '_orig_mod')
    task.set_step(0, 3, 10, 2)
    assert torch.allclose(task(images, targets)['loss'], expected)


def test_pixel_mixing_takes_dataset_partners_when_given():
    task = MimoTask.from_model(tiny_mimo(), mimo_cutmix=1.0, mimo_mix_prob=1.0, seed=0, verbose=False)
    images, targets = batch()
    partners = torch.full((8, 1, 8, 8), 50.0)
    task.set_step(0, 0, 1, 1)
    xs, ys, _ = task.mix_inputs(images, targets, partners, torch.zeros(8, dtype=torch.long))
    assert (xs == 50.0).any()  # partner pixels came in
    assert ys.shape == (8, 2, 3) and torch.allclose(ys.sum(-1), torch.ones(8, 2))
    with pytest.raises(ValueError, match='no pixel mixing'):
        MimoTask.from_model(tiny_mimo(), verbose=False).mix_inputs(images, targets, partners, targets)


def test_pixel_mixing_without_partners_takes_them_from_the_batch():
    """Decision (docs/decisions.md): called without dataset partners, the task mixes inputs with images of the batch
    itself (the papers draw them from the whole dataset; train.py always passes them)."""
    task = MimoTask.from_model(tiny_mimo(), mimo_cutmix=1.0, mimo_mix_prob=1.0, seed=0, verbose=False)
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 8, 8).contiguous()
    targets = torch.arange(8) % 3
    task.set_step(0, 0, 1, 1)
    xs, ys, _ = task.mix_inputs(images, targets)
    assert set(xs.unique().tolist()) <= set(range(8))  # every pixel is one of the batch's images
    assert any(xs[b, m].unique().numel() > 1 for b in range(8) for m in range(2))  # and inputs were mixed
    assert torch.allclose(ys.sum(-1), torch.ones(8, 2))


def test_readme_own_loop_example():
    # docs/training.md "In your own loop" (kept in sync by hand): MimoTask in a plain PyTorch loop
    model = tiny_mimo()
    task = MimoTask.from_model(model, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = [batch(16, seed) for seed in range(4)]
    epochs = 2
    losses = []
    for epoch in range(epochs):
        for step, (images, targets) in enumerate(loader):
            task.set_step(epoch, step, len(loader), epochs)
            result = task(images, targets)
            result['loss'].backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(result['loss'].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    model.eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)  # evaluation: plain images, ensemble logits


@pytest.mark.slow
def test_timm_train_loop_shape_with_mimo_task_learns_digits(digits_dir):
    """timm's train.py loop by hand (create_model, optimizer, scheduler, task(input, target), backward, step,
    EMA update, step_update), with ClassificationTask swapped for MimoTask, on real images (sklearn digits)."""
    torch.manual_seed(0)
    model = timm.create_model('cut_mixmo', backbone='wrn28_2', depth=10, widen_factor=1, num_classes=10, in_chans=1)
    task = MimoTask.from_model(model, seed=0, verbose=False)
    task.setup_ema(decay=0.9)
    tf = eval_transform((1, 8, 8), (0.5,), (0.5,))
    train_set = create_dataset('', root=str(digits_dir), split='train', is_training=True)
    train_set.transform = tf
    val_set = create_dataset('', root=str(digits_dir), split='validation')
    val_set.transform = tf
    loader = DataLoader(train_set, batch_size=64, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    optimizer = create_optimizer_v2(task.get_trainable_module(), opt='sgd', lr=0.05, weight_decay=3e-4)
    epochs = 3
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=epochs, warmup_epochs=0,
                                       step_on_epochs=False, updates_per_epoch=len(loader))
    for epoch in range(epochs):
        task.train()
        for step, (images, targets) in enumerate(loader):
            task.set_step(epoch, step, len(loader), epochs)
            result = task(images, targets)
            optimizer.zero_grad()
            result['loss'].backward()
            optimizer.step()
            num_updates = epoch * len(loader) + step + 1
            task.update_ema(step=num_updates)
            scheduler.step_update(num_updates=num_updates)
        scheduler.step(epoch + 1)
    val_loader = DataLoader(val_set, batch_size=100)
    member_logits, targets = collect_member_logits(task.get_eval_model(), val_loader, torch.device('cpu'))
    assert member_logits.shape[1:] == (2, 10)
    accuracy = topk_accuracy(member_logits.mean(1), targets)
    assert accuracy > 50.0, accuracy  # 10 classes: chance is 10 %
