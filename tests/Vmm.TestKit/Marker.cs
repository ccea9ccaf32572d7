namespace Vmm.TestKit; public static class Marker { }
