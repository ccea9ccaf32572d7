namespace Vmm.VhostUser; internal static class AssemblyMarker { }
