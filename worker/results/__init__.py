"""Result objects sent back to the PACS: SEG, TID 1500 SR, key images (SC + KOS), PNG preview."""
