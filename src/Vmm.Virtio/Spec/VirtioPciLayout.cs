namespace Vmm.Virtio.Spec;

/// <summary>virtio-pci capability types, <c>cfg_type</c> (virtio 1.2, 4.1.4 "Virtio Structure PCI Capabilities").</summary>
public enum VirtioPciCapType : byte
{
    CommonCfg = 1,
    NotifyCfg = 2,
    IsrCfg = 3,
    DeviceCfg = 4,
    PciCfg = 5,
    SharedMemoryCfg = 8,
    VendorCfg = 9,
}

/// <summary>
/// virtio-pci modern layout: PCI identity (4.1.2), the vendor capability structure (4.1.4),
/// the common configuration structure (4.1.4.3) and the notify capability (4.1.4.4).
/// </summary>
public static class VirtioPciLayout
{
    /// <summary>PCI vendor ID of every virtio device (4.1.2).</summary>
    public const ushort VendorId = 0x1AF4;

    /// <summary>Modern devices: PCI device ID = 0x1040 + virtio device ID (4.1.2).</summary>
    public const ushort DeviceIdBase = 0x1040;

    /// <summary>Revision ID 1 or more marks a non-transitional device (4.1.2.1).</summary>
    public const byte RevisionId = 1;

    /// <summary>"No vector": the queue or configuration change raises no MSI-X message (4.1.4.3 / 4.1.5.1.2).</summary>
    public const ushort NoVector = 0xffff;

    public static ushort PciDeviceId(VirtioDeviceId id) => (ushort)(DeviceIdBase + (ushort)id);

    // PCI type 0 configuration header (PCI Local Bus 3.0, 6.1).
    public const int PciVendorId = 0x00;
    public const int PciDeviceIdOffset = 0x02;
    public const int PciCommand = 0x04;
    public const int PciStatus = 0x06;
    public const int PciRevisionId = 0x08;
    public const int PciClassCode = 0x09;
    public const int PciHeaderType = 0x0e;
    public const int PciBar0 = 0x10;
    public const int PciSubsystemVendorId = 0x2c;
    public const int PciSubsystemId = 0x2e;
    public const int PciCapabilitiesPointer = 0x34;
    public const int PciInterruptLine = 0x3c;
    public const int PciInterruptPin = 0x3d;

    /// <summary>Status register bit 4: the capability list is valid.</summary>
    public const ushort PciStatusCapabilitiesList = 1 << 4;

    /// <summary>PCI capability ID of vendor-specific capabilities, used by every virtio structure (4.1.4).</summary>
    public const byte PciCapIdVendor = 0x09;

    /// <summary>PCI capability ID of MSI-X (PCI Local Bus 3.0, 6.8.2).</summary>
    public const byte PciCapIdMsix = 0x11;

    // struct virtio_pci_cap (4.1.4).
    public const int CapVendor = 0;
    public const int CapNext = 1;
    public const int CapLength = 2;
    public const int CapCfgType = 3;
    public const int CapBar = 4;
    public const int CapId = 5;
    public const int CapOffset = 8;
    public const int CapLengthField = 12;

    /// <summary>sizeof(struct virtio_pci_cap).</summary>
    public const int CapSize = 16;

    /// <summary>struct virtio_pci_notify_cap: notify_off_multiplier follows the cap (4.1.4.4).</summary>
    public const int NotifyCapMultiplier = 16;

    public const int NotifyCapSize = 20;

    /// <summary>struct virtio_pci_cfg_cap: pci_cfg_data follows the cap (4.1.4.9).</summary>
    public const int PciCfgCapData = 16;

    public const int PciCfgCapSize = 20;

    // MSI-X capability (PCI Local Bus 3.0, 6.8.2): message control, table and PBA offset/BIR.
    public const int MsixMessageControl = 2;
    public const int MsixTable = 4;
    public const int MsixPba = 8;
    public const int MsixCapSize = 12;
    public const ushort MsixControlEnable = 1 << 15;
    public const ushort MsixControlFunctionMask = 1 << 14;

    /// <summary>Table Size (bits 10:0 of message control): the number of entries minus one.</summary>
    public const ushort MsixControlTableSize = 0x7ff;

    /// <summary>One MSI-X table entry: address low/high, data, vector control (PCI 3.0, 6.8.2.6 to 6.8.2.9).</summary>
    public const int MsixEntrySize = 16;
    public const int MsixEntryAddressLow = 0;
    public const int MsixEntryAddressHigh = 4;
    public const int MsixEntryData = 8;
    public const int MsixEntryVectorControl = 12;

    /// <summary>Vector control bit 0: the entry is masked (1 after reset).</summary>
    public const uint MsixVectorControlMask = 1;

    // struct virtio_pci_common_cfg (4.1.4.3); the width of each field is its natural access size.
    public const int CommonDeviceFeatureSelect = 0x00;
    public const int CommonDeviceFeature = 0x04;
    public const int CommonDriverFeatureSelect = 0x08;
    public const int CommonDriverFeature = 0x0c;
    public const int CommonConfigMsixVector = 0x10;
    public const int CommonNumQueues = 0x12;
    public const int CommonDeviceStatus = 0x14;
    public const int CommonConfigGeneration = 0x15;
    public const int CommonQueueSelect = 0x16;
    public const int CommonQueueSize = 0x18;
    public const int CommonQueueMsixVector = 0x1a;
    public const int CommonQueueEnable = 0x1c;
    public const int CommonQueueNotifyOff = 0x1e;
    public const int CommonQueueDesc = 0x20;
    public const int CommonQueueDriver = 0x28;
    public const int CommonQueueDevice = 0x30;
    public const int CommonQueueNotifConfigData = 0x38;
    public const int CommonQueueReset = 0x3a;

    /// <summary>Size of the virtio 1.2 common configuration structure.</summary>
    public const int CommonSize = 0x3c;

    /// <summary>ISR bit 0: queue interrupt; bit 1: device configuration interrupt (4.1.4.5).</summary>
    public const byte IsrQueue = 1;

    public const byte IsrConfig = 2;

    // Where this VMM places the structures in BAR0 (the layout is the device's choice, 4.1.4).
    public const uint Bar0CommonOffset = 0x0000;
    public const uint Bar0IsrOffset = 0x1000;
    public const uint Bar0DeviceOffset = 0x2000;
    public const uint Bar0NotifyOffset = 0x3000;
    public const uint Bar0MsixTableOffset = 0x4000;
    public const uint Bar0MsixPbaOffset = 0x5000;
    public const uint Bar0RegionSize = 0x1000;

    /// <summary>BAR0 size: a power of two, as BAR sizing requires.</summary>
    public const uint Bar0Size = 0x8000;

    /// <summary>Queue n notifies at Bar0NotifyOffset + n * NotifyOffMultiplier (queue_notify_off = n).</summary>
    public const uint NotifyOffMultiplier = 4;
}
