import pytest
import torch
import torch.nn.functional as F

from shared.data import load_dataset
from shared.distill.training import (
    distill,
    evaluate,
    kd_loss,
    predict,
    top_k_accuracies,
    train_supervised,
)
from shared.models import build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _soft_labels(seed: int, rows: int, classes: int = 10) -> torch.Tensor:
    return torch.softmax(2 * torch.randn(rows, classes, generator=_generator(seed)), dim=1)


def test_cnn_learns_digits_in_a_few_epochs(digits):
    # Given
    train, test = digits
    model = build_model("cnn", train.input_shape, train.num_classes, seed=0)
    # When
    loss = train_supervised(
        model,
        train.images,
        train.labels,
        epochs=5,
        batch_size=32,
        lr=0.1,
        generator=_generator(0),
    )
    # Then
    assert evaluate(model, test.images, test.labels) > 0.85
    assert loss < 0.5


def test_training_twice_from_the_same_seed_gives_identical_weights(digits):
    # Given
    train, _ = digits
    targets = _soft_labels(1, 200)
    weights = []
    for _ in range(2):
        model = build_model("cnn", train.input_shape, 10, seed=2)
        # When
        train_supervised(
            model,
            train.images[:300],
            train.labels[:300],
            epochs=2,
            batch_size=50,
            lr=0.1,
            generator=_generator(9),
        )
        distill(model, train.images[:200], targets, epochs=2, batch_size=50, lr=0.1)
        weights.append([p.detach().clone() for p in model.parameters()])
    # Then
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_another_shuffle_seed_gives_different_weights(digits):
    # Given
    train, _ = digits
    weights = []
    for seed in (0, 1):
        model = build_model("mlp", train.input_shape, 10, seed=0)
        # When
        train_supervised(
            model,
            train.images[:200],
            train.labels[:200],
            epochs=1,
            batch_size=50,
            lr=0.1,
            generator=_generator(seed),
        )
        weights.append([p.detach().clone() for p in model.parameters()])
    # Then
    assert not all(torch.equal(a, b) for a, b in zip(*weights, strict=True))


def test_train_supervised_returns_the_mean_loss_of_the_last_epoch(digits):
    # Given a learning rate of zero, so the model never changes
    train, _ = digits
    images, labels = train.images[:130], train.labels[:130]
    model = build_model("cnn", train.input_shape, 10, seed=0)
    expected = F.cross_entropy(model(images), labels).item()
    # When
    loss = train_supervised(
        model, images, labels, epochs=2, batch_size=50, lr=0.0, generator=_generator(0)
    )
    # Then
    assert loss == pytest.approx(expected, rel=1e-5)
    assert model.training


def test_distill_moves_predictions_towards_the_targets(digits):
    # Given a teacher's soft labels on images the student has never seen labelled
    train, test = digits
    teacher = build_model("cnn", train.input_shape, 10, seed=1)
    train_supervised(
        teacher,
        train.images,
        train.labels,
        epochs=2,
        batch_size=32,
        lr=0.1,
        generator=_generator(0),
    )
    images = test.images[:300]
    targets = predict(teacher, images)
    student = build_model("cnn", train.input_shape, 10, seed=0)
    before = kd_loss(torch.log(predict(student, images)), targets).item()
    # When
    last_epoch_loss = distill(student, images, targets, epochs=10, batch_size=25, lr=0.1)
    # Then
    after = kd_loss(torch.log(predict(student, images)), targets).item()
    assert after < 0.2 * before
    assert last_epoch_loss < 0.2 * before
    agreement = (predict(student, images).argmax(1) == targets.argmax(1)).float().mean()
    assert agreement > 0.8


def test_distill_on_nothing_returns_zero_and_changes_nothing():
    # Given
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    model.eval()
    weights = [p.detach().clone() for p in model.parameters()]
    # When
    loss = distill(
        model, torch.empty(0, 1, 8, 8), torch.empty(0, 10), epochs=5, batch_size=10, lr=0.1
    )
    # Then
    assert loss == 0.0
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))


def test_kd_loss_is_the_batch_mean_kl_divergence():
    # Given
    student_logits = torch.randn(6, 5, generator=_generator(0))
    teacher = _soft_labels(1, 6, 5)
    student = torch.softmax(student_logits, dim=1)
    # When
    loss = kd_loss(student_logits, teacher)
    # Then
    reference = (teacher * (teacher.log() - student.log())).sum() / 6
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert kd_loss(teacher.log(), teacher).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("train_mode", [True, False])
def test_predict_gives_probability_rows_and_restores_the_mode(digits, train_mode):
    # Given
    model = build_model("resnet20", (1, 8, 8), 10, seed=0)
    model.train(train_mode)
    images = digits[1].images[:37]
    # When
    probs = predict(model, images, batch_size=10)
    # Then
    assert probs.shape == (37, 10)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(37), atol=1e-5)
    assert (probs >= 0).all()
    assert model.training is train_mode
    assert not probs.requires_grad


def test_predict_on_nothing_gives_zero_rows_of_class_probabilities():
    model = build_model("resnet20", (1, 8, 8), 10, seed=0)
    assert predict(model, torch.empty(0, 1, 8, 8)).shape == (0, 10)


def test_evaluate_counts_top1_hits(digits):
    # Given
    images, labels = digits[1].images[:50], digits[1].labels[:50]
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    # When
    accuracy = evaluate(model, images, labels, batch_size=16)
    # Then
    hits = (model(images).argmax(dim=1) == labels).sum().item()
    assert accuracy == pytest.approx(hits / 50)


def test_evaluate_on_nothing_is_an_error():
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate(model, torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.int64))


def test_top_k_accuracies_count_a_label_found_among_the_k_best_classes():
    # Given a "model" whose outputs are fixed logits: sample 0's label is its best class,
    # sample 1's its second best, sample 2's its worst of four
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0], [3.0, 4.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return logits[x[:, 0, 0, 0].long()]

    images = torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1)
    labels = torch.tensor([0, 0, 0])
    # When / Then: top-1 finds one, top-2 two, top-4 (all classes) and a k above C all
    top1, top2, top4, top9 = top_k_accuracies(Fixed(), images, labels, (1, 2, 4, 9))
    assert (top1, top2, top4, top9) == pytest.approx((1 / 3, 2 / 3, 1.0, 1.0))
    assert evaluate(Fixed(), images, labels) == top1
    with pytest.raises(ValueError, match="k >= 1"):
        top_k_accuracies(Fixed(), images, labels, (0,))
