"""timm_mimo: multi-input multi-output ensembles (MixMo, MixViT, ...) as first-class timm models.

``import timm_mimo`` registers every model in timm's registry, so ``timm.create_model('cut_mixmo_wrn28_10')`` works,
and makes ``timm_mimo.hub`` (save / push / load / export with model cards) available.
"""
from timm_mimo import hub, models  # models: registers the models with timm
from timm_mimo.loss import MimoLoss, mixing_loss_weights
from timm_mimo.mixing import MASK_KINDS, Mixer, MixPlan
from timm_mimo.models import MemberHeads, MimoContract

__version__ = '0.1.0'
__all__ = ['MASK_KINDS', 'MemberHeads', 'MimoContract', 'MimoLoss', 'MixPlan', 'Mixer', 'hub', 'mixing_loss_weights',
           'models']
