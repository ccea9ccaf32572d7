using System.Buffers.Binary;
using Vmm.Core.Machine;
using Vmm.Virtio.Machine;
using Vmm.Virtio.Spec;

namespace Vmm.Virtio.Driver;

public enum VirtioTransportKind
{
    Mmio,
    Pci,
}

/// <summary>
/// A virtio device found on the bus. <paramref name="Address"/> is the virtio-mmio window, or the
/// PCI function's configuration space; <paramref name="Irq"/> is the virtio-mmio interrupt (PCI
/// devices announce their vectors in the MSI-X table instead, and have -1 here).
/// </summary>
public sealed record VirtioDeviceLocation(VirtioTransportKind Kind, int Slot, ulong Address, VirtioDeviceId DeviceId, int Irq);

/// <summary>Finds virtio devices by reading the bus at the places <see cref="VirtioMachineLayout"/> defines.</summary>
public static class VirtioDeviceLocator
{
    public static IReadOnlyList<VirtioDeviceLocation> Discover(MmioBus bus)
    {
        ArgumentNullException.ThrowIfNull(bus);
        var found = new List<VirtioDeviceLocation>();
        for (int slot = 0; slot < VirtioMachineLayout.MmioSlots; slot++)
        {
            ulong window = VirtioMachineLayout.MmioWindow(slot);

            // virtio 1.2, 4.2.3.1.1: check MagicValue and Version; DeviceID 0 is a placeholder
            // window with no device behind it. Version 1 (legacy) is not driven here.
            if (bus.ReadUInt32(window + VirtioMmioRegisters.MagicValue) != VirtioMmioRegisters.MagicValueExpected
                || bus.ReadUInt32(window + VirtioMmioRegisters.Version) != VirtioMmioRegisters.VersionModern)
            {
                continue;
            }

            uint id = bus.ReadUInt32(window + VirtioMmioRegisters.DeviceId);
            if (id != 0)
            {
                found.Add(new VirtioDeviceLocation(VirtioTransportKind.Mmio, slot, window, (VirtioDeviceId)id, VirtioMachineLayout.MmioIrq(slot)));
            }
        }

        Span<byte> b = stackalloc byte[4];
        for (int slot = 0; slot < VirtioMachineLayout.PciSlots; slot++)
        {
            ulong config = VirtioMachineLayout.PciConfigAddress(slot);
            bus.Read(config + VirtioPciLayout.PciVendorId, b);
            ushort vendor = BinaryPrimitives.ReadUInt16LittleEndian(b);
            ushort device = BinaryPrimitives.ReadUInt16LittleEndian(b[2..]);

            // 4.1.2: vendor 0x1AF4; 0x1040 and up are modern (non-transitional) devices.
            if (vendor == VirtioPciLayout.VendorId && device >= VirtioPciLayout.DeviceIdBase && device <= 0x107f)
            {
                found.Add(new VirtioDeviceLocation(VirtioTransportKind.Pci, slot, config, (VirtioDeviceId)(device - VirtioPciLayout.DeviceIdBase), -1));
            }
        }

        return found;
    }
}
