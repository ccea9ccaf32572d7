namespace Vmm.Core.Interrupts;

/// <summary>
/// A message-signalled interrupt as a device's MSI-X table entry holds it (PCI 3.0 §6.8.2.6 to
/// §6.8.2.8): the address the function writes to and the data it writes. The platform decides
/// what it means; the machine in Vmm.Virtio reads the x86 form (address in the 0xFEExxxxx
/// interrupt window, data = the vector).
/// </summary>
public readonly record struct MsiMessage(ulong Address, uint Data);
