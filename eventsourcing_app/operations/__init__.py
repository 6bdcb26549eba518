"""Operations on the store as a whole (relay, refill, verification); commands and tasks call these."""
