"""Physical constants used by the twin (SI unless the name says otherwise)."""

from __future__ import annotations

#: Planck constant times speed of light, in eV nm (E[eV] = HC_EV_NM / wavelength[nm]).
HC_EV_NM = 1239.841984
#: Elementary charge, in C (converts eV to J).
ELEMENTARY_CHARGE_C = 1.602176634e-19
#: Speed of light in vacuum, in um/ps.
SPEED_OF_LIGHT_UM_PER_PS = 299.792458
#: Pump wavelength of the bench's Yb:YAG femtosecond laser, in nm.
PUMP_WAVELENGTH_NM = 1030.0


def photon_energy_eV(wavelength_nm: float) -> float:
    """Photon energy in eV of light of the given vacuum wavelength in nm."""
    return HC_EV_NM / wavelength_nm
