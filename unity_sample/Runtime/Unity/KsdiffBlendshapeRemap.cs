// A remap asset: ARKit names -> a mesh's own shape names, for meshes whose shapes are not named
// like ARKit's (Create > ksdiff > Blendshape Remap). Matching rules: BlendshapeMapping.cs.
using System.Collections.Generic;
using UnityEngine;

namespace Ksdiff.Unity
{
    [CreateAssetMenu(menuName = "ksdiff/Blendshape Remap", fileName = "BlendshapeRemap")]
    public sealed class KsdiffBlendshapeRemap : ScriptableObject
    {
        [Tooltip("ARKit name (any case) -> the mesh's shape name (empty: not driven) and a weight scale. " +
                 "Shapes named like ARKit (any case, any 'prefix.') need no entry.")]
        public List<RemapEntry> entries = new List<RemapEntry>();
    }
}
