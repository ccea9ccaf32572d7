namespace Vmm.Core.Interrupts;

/// <summary>
/// A message-signalled interrupt as a device's MSI-X table entry holds it (PCI 3.0 §6.8.2.6 to
/// §6.8.2.8): the address the function writes to and the data it writes. The platform decides
/// what it means; <see cref="X86"/> and <see cref="TryGetX86Vector"/> are the form this VMM's
/// machine and guest driver use.
/// </summary>
public readonly record struct MsiMessage(ulong Address, uint Data)
{
    /// <summary>
    /// The x86 interrupt message window (Intel SDM vol. 3, "Message Address Register Format"):
    /// 0xFEExxxxx, bits 19:12 the destination APIC ID. Linux programs 0xFEE00000 for CPU 0.
    /// </summary>
    public const ulong X86AddressBase = 0xFEE0_0000;

    private const ulong X86AddressMask = 0xFFFF_FFFF_FFF0_0000;

    /// <summary>
    /// The message for <paramref name="vector"/> on CPU 0. The data is the whole vector number:
    /// x86 keeps the vector in bits 7:0, but this VMM's interrupt controller has one flat vector
    /// space wider than 256 (the guest driver's eventfds, a host's callback).
    /// </summary>
    public static MsiMessage X86(int vector)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(vector);
        return new MsiMessage(X86AddressBase, (uint)vector);
    }

    /// <summary>The vector of an x86-form message; false for an address outside the interrupt window.</summary>
    public bool TryGetX86Vector(out int vector)
    {
        vector = (int)Math.Min(Data, int.MaxValue);
        return (Address & X86AddressMask) == X86AddressBase && Data <= int.MaxValue;
    }
}
