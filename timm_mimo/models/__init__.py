"""Model families; importing this package registers every timm_mimo model in timm's registry."""
from timm_mimo.models import cifar_resnet, convit_ca, mimo_cnn, mimo_vit, mixshare, mixvit  # registration
from timm_mimo.models._contract import MimoContract
from timm_mimo.models._heads import MemberHeads

__all__ = ['MemberHeads', 'MimoContract', 'cifar_resnet', 'convit_ca', 'mimo_cnn', 'mimo_vit', 'mixshare', 'mixvit']
