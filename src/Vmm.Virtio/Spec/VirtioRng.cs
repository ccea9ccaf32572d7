namespace Vmm.Virtio.Spec;

/// <summary>
/// The entropy device (virtio 1.2, 5.4): one queue (requestq), no feature bits, no
/// configuration space. The driver offers device-writable buffers; the device fills them.
/// </summary>
public static class VirtioRng
{
    public const int QueueCount = 1;

    public const int ConfigSize = 0;
}
