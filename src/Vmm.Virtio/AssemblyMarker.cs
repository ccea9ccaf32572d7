namespace Vmm.Virtio; internal static class AssemblyMarker { }
