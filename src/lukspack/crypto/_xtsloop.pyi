from typing_extensions import Buffer

def xts_sectors(init_addr: int, update_addr: int, ctx_addr: int, buf: Buffer, sector_size: int,
                first_iv: int, iv_step: int, iv_mask: int, /) -> None:
    """AES-XTS of whole sectors of buf in place, one EVP_CipherInit_ex + EVP_CipherUpdate per
    sector (the plain64 IV advancing by iv_step, masked by iv_mask), the GIL released."""
